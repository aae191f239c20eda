"""`flint complete --file --cursor` and `flint edit --lines` split files where the user means."""

import pytest

from flint.cli import build_parser, serve_config
from flint.cli_requests import split_at_cursor, split_lines
from flint.errors import InvalidArgument

SOURCE = "def f(x):\n    return x\n\nprint(f(2))\n"


def test_cursor_splits_prefix_and_suffix_at_line_and_column():
    prefix, suffix = split_at_cursor(SOURCE, "2:12")
    assert prefix == "def f(x):\n    return " and suffix == "x\n\nprint(f(2))\n"
    assert split_at_cursor(SOURCE, None) == (SOURCE, "")
    assert split_at_cursor(SOURCE, "1:1") == ("", SOURCE)


@pytest.mark.parametrize("cursor, message", [("2", "LINE:COL"), ("9:1", "outside the file"),
                                             ("1:99", "outside line 1")])
def test_bad_cursor_says_what_is_allowed(cursor, message):
    with pytest.raises(InvalidArgument, match=message):
        split_at_cursor(SOURCE, cursor)


def test_line_range_selects_the_region_to_edit():
    before, region, after = split_lines(SOURCE, "2-3")
    assert (before, region, after) == ("def f(x):\n", "    return x\n\n", "print(f(2))\n")
    with pytest.raises(InvalidArgument, match=r"1 <= A <= B <= 4"):
        split_lines(SOURCE, "3-9")


def test_flags_override_the_config_file_and_unknown_file_keys_fail(tmp_path):
    config = tmp_path / "serve.json"
    config.write_text('{"workers": 3, "port": 6000}')
    args = build_parser().parse_args(["serve", "--config", str(config), "--port", "0"])
    assert (serve_config(args).workers, serve_config(args).port) == (3, 0)
    config.write_text('{"wrokers": 3}')
    with pytest.raises(InvalidArgument, match="unknown key"):
        serve_config(args)


def test_quantization_flag_sets_the_engine_key_and_keeps_the_files_other_engine_keys(tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text("[engine]\nquant_group_size = 128\nquantization = \"int8\"\n")
    args = build_parser().parse_args(["serve", "--config", str(config), "--quantization", "int4"])
    assert serve_config(args).engine == {"quant_group_size": 128, "quantization": "int4"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--quantization", "int3"])


def test_the_engine_transport_is_the_link_unless_the_flag_or_the_file_says_grpc(tmp_path):
    assert serve_config(build_parser().parse_args(["serve"])).engine_transport == "link"
    assert serve_config(build_parser().parse_args(["serve", "--engine-transport", "grpc"])).engine_transport == "grpc"
    config = tmp_path / "serve.toml"
    config.write_text('engine_transport = "grpc"\n')
    assert serve_config(build_parser().parse_args(["serve", "--config", str(config)])).engine_transport == "grpc"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--engine-transport", "http"])
