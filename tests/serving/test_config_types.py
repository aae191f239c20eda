"""A config value of the wrong type names its key and the type wanted (not "'<' not supported ...")."""

import pytest

from flint.config import ServeConfig, from_mapping
from flint.engine.config import EngineConfig
from flint.errors import InvalidArgument
from flint.load.config import RunConfig


@pytest.mark.parametrize("values, message", [
    ({"workers": "2"}, "flint.toml: workers must be an integer, got '2' (str)"),
    ({"port": True}, "flint.toml: port must be an integer, got True (bool)"),
    ({"replica_num_cpus": "1"}, "flint.toml: replica_num_cpus must be a number, got '1' (str)"),
    ({"host": 5}, "flint.toml: host must be a string, got 5 (int)"),
    ({"engine": [1]}, "flint.toml: engine must be a table, got [1] (list)"),
])
def test_serve_config_type_errors_name_the_key_and_the_type(values, message):
    with pytest.raises(InvalidArgument) as err:
        from_mapping(ServeConfig, values, where="flint.toml")
    assert str(err.value.message) == message


def test_engine_and_load_config_type_errors_name_the_key():
    with pytest.raises(InvalidArgument, match=r"engine config: max_batch_size must be an integer, got '8' \(str\)"):
        EngineConfig.from_dict({"max_batch_size": "8"})
    with pytest.raises(InvalidArgument, match=r"bounds: duration_s must be a number, got 'x' \(str\)"):
        from_mapping(RunConfig, {"bounds": {"duration_s": "x"}})


def test_right_types_still_pass_including_ints_for_floats_and_lists_for_tuples():
    assert from_mapping(ServeConfig, {"replica_num_cpus": 2, "workers": 3}).replica_num_cpus == 2
    assert EngineConfig.from_dict({"compile_batch_sizes": [1, 2]}).compile_batch_sizes == (1, 2)
