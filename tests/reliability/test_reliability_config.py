"""`flint serve --config` carries the journal / admission / security / observability tables, validated early."""

import pytest

from flint.cli import build_parser, serve_config
from flint.errors import InvalidArgument


def test_serve_config_file_tables_reach_the_front_end_settings(tmp_path):
    path = tmp_path / "flint.toml"
    path.write_text('[security]\nrate_limit_per_s = 20\nmax_context_files = 8\n'
                    '[admission]\nmax_inflight_per_tenant = 4\n[journal]\nttl_s = 120\n'
                    '[observability]\nmetrics_port = 9400\njson_logs = true\n')
    config = serve_config(build_parser().parse_args(["serve", "--config", str(path)]))
    assert config.security == {"rate_limit_per_s": 20, "max_context_files": 8}
    assert config.admission["max_inflight_per_tenant"] == 4 and config.journal["ttl_s"] == 120
    assert config.observability["json_logs"] is True


@pytest.mark.parametrize("table, message", [
    ('[security]\ntls_cert_file = "/nope.pem"\ntls_key_file = "/nope.key"\n', "not a readable file"),
    ('[security]\ntls_cert_file = "x"\n', "set both tls_cert_file and tls_key_file"),
    ('[admission]\nmax_waiting = -1\n', "admission.max_waiting must be an integer >= 0"),
    ('[journal]\nmax_deltas = 2\n', "journal.max_deltas must be an integer >= 16"),
    ('[observability]\nmetrics_port = 70000\n', "observability.metrics_port"),
    ('[security]\napi_key = "x"\n', "unknown key(s) api_key"),
])
def test_bad_reliability_settings_fail_at_start_with_what_to_change(tmp_path, table, message):
    path = tmp_path / "flint.toml"
    path.write_text(table)
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        serve_config(build_parser().parse_args(["serve", "--config", str(path)]))
