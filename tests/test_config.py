"""The config file: parse, compile, every key's check, cross-key rules, file security."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autonumad.plan.selection import cgroup_under
from autonumad.service.config import (
    DEFAULT_METRICS_PORT,
    KNOB_NAMES,
    SECTIONS,
    Amount,
    Config,
    ConfigError,
    KernelConfig,
    BalanceConfig,
    compile_config,
    config_to_dict,
    format_size,
    load_config,
    parse_amount,
    parse_listen,
    parse_size,
    parse_toml,
    security_problems,
)
from autonumad.errors import ParseError

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "config" / "autonumad.toml"


def compile_text(text: str) -> Config:
    return compile_config(parse_toml(text))


def errors_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        compile_config(raw)
    return exc.value.errors


# -- defaults and the shipped sample ---------------------------------------------------------


def test_empty_document_gives_defaults():
    assert compile_text("") == Config()
    assert compile_config({"daemon": {}, "tiering": {}}) == Config()


def test_sample_config_is_exactly_the_defaults():
    assert compile_config(parse_toml(SAMPLE.read_bytes())) == Config()


def test_sample_config_lists_every_key_of_every_section():
    raw = parse_toml(SAMPLE.read_bytes())
    assert set(raw) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        assert set(raw[name]) == {f.name for f in dataclasses.fields(cls)}, name


def test_sample_config_comments_every_key_with_its_default():
    # Each key line is preceded by a comment block that states the default,
    # so the operator never has to read the code.
    lines = SAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_A-Z]+ = ", line):
            block = []
            j = i - 1
            while j >= 0 and (lines[j].startswith("#") or re.match(r"^[a-z_A-Z]+ = ", lines[j])):
                block.append(lines[j])
                j -= 1
            assert any("efault" in b for b in block if b.startswith("#")), f"no default stated above {line!r}"


def test_every_default_passes_its_own_check():
    # config_to_dict renders the defaults back to TOML values; compiling them
    # again must be the identity, key by key.
    assert compile_config(config_to_dict(Config())) == Config()


# -- valid values: what each check accepts and what it compiles to -----------------------------

VALID = [
    ("interval-int-is-float", {"daemon": {"interval_s": 5}}, "daemon.interval_s", 5.0),
    ("interval-lower-bound", {"daemon": {"interval_s": 0.5}}, "daemon.interval_s", 0.5),
    ("fast-recheck-off", {"daemon": {"fast_recheck_s": 0}}, "daemon.fast_recheck_s", 0.0),
    ("log-level", {"daemon": {"log_level": "debug"}}, "daemon.log_level", "debug"),
    ("local-fraction-1", {"balance": {"target_local_fraction": 1}}, "balance.target_local_fraction", 1.0),
    ("min-rss-size-string", {"balance": {"min_rss_bytes": "300MiB"}}, "balance.min_rss_bytes", 300 << 20),
    ("min-rss-int", {"balance": {"min_rss_bytes": 0}}, "balance.min_rss_bytes", 0),
    ("exclude-comm-compiled", {"balance": {"exclude_comm": ["^qemu-", "java"]}}, "balance.exclude_comm",
     (re.compile("^qemu-"), re.compile("java"))),
    ("cgroup-normalised", {"balance": {"exclude_cgroup": ["/system.slice//db.service/"]}}, "balance.exclude_cgroup",
     ("/system.slice/db.service",)),
    ("exclude-pids", {"balance": {"exclude_pids": [1, 4194304]}}, "balance.exclude_pids", (1, 4194304)),
    ("numa-balancing-off", {"kernel": {"numa_balancing": "off"}}, "kernel.numa_balancing", 0),
    ("numa-balancing-name", {"kernel": {"numa_balancing": "normal+tiering"}}, "kernel.numa_balancing", 3),
    ("numa-balancing-int", {"kernel": {"numa_balancing": 2}}, "kernel.numa_balancing", 2),
    ("numa-balancing-keep", {"kernel": {"numa_balancing": "keep"}}, "kernel.numa_balancing", None),
    ("demotion-false", {"kernel": {"demotion_enabled": False}}, "kernel.demotion_enabled", False),
    ("wsf", {"kernel": {"watermark_scale_factor": 3000}}, "kernel.watermark_scale_factor", 3000),
    ("rate-limit-0", {"kernel": {"numa_balancing_promote_rate_limit_MBps": 0}},
     "kernel.numa_balancing_promote_rate_limit_MBps", 0),
    ("listen-v6", {"metrics": {"listen": "[::1]:9999"}}, "metrics.listen", "[::1]:9999"),
    ("listen-off", {"metrics": {"listen": ""}}, "metrics.listen", ""),
    ("textfile", {"metrics": {"textfile": "/var/lib/node_exporter/autonumad.prom"}}, "metrics.textfile",
     "/var/lib/node_exporter/autonumad.prom"),
    ("fast-nodes-list-syntax", {"tiering": {"fast_nodes": "0-1,3"}}, "tiering.fast_nodes", (0, 1, 3)),
    ("slow-nodes-deduped", {"tiering": {"slow_nodes": [3, 2, 3]}}, "tiering.slow_nodes", (2, 3)),
    ("demotion-targets", {"tiering": {"demotion_targets": {"1": 2, "0": 2}}}, "tiering.demotion_targets",
     ((0, 2), (1, 2))),
    ("headroom-bytes", {"tiering": {"headroom": "512MiB"}}, "tiering.headroom", Amount(bytes=512 << 20)),
    ("headroom-int", {"tiering": {"headroom": 4096}}, "tiering.headroom", Amount(bytes=4096)),
    ("headroom-percent", {"tiering": {"headroom": "5%"}}, "tiering.headroom", Amount(fraction=0.05)),
    ("tracker", {"tiering": {"tracker": "softdirty"}}, "tiering.tracker", "softdirty"),
]


@pytest.mark.parametrize("raw,key,expected", [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_value_compiles(raw, key, expected):
    section, name = key.split(".")
    assert getattr(getattr(compile_config(raw), section), name) == expected


# -- invalid values: the exact line the operator reads ----------------------------------------

INVALID = [
    ("fraction-out-of-range", {"balance": {"target_local_fraction": 1.7}},
     "balance.target_local_fraction: expected a number in [0.5, 1.0], got 1.7"),
    ("string-for-number", {"daemon": {"interval_s": "5s"}},
     'daemon.interval_s: expected a number in [0.5, 3600], got "5s"'),
    ("bool-is-not-a-number", {"daemon": {"interval_s": True}},
     "daemon.interval_s: expected a number in [0.5, 3600], got true"),
    ("nan", {"daemon": {"interval_s": float("nan")}},
     "daemon.interval_s: expected a number in [0.5, 3600], got nan"),
    ("rate-zero", {"balance": {"migrate_rate_mib_s": 0}},
     "balance.migrate_rate_mib_s: expected a number in (0, 1000000], got 0"),
    ("float-for-integer", {"balance": {"scan_max_processes": 1.5}},
     "balance.scan_max_processes: expected an integer in [0, 1000000], got 1.5"),
    ("bool-for-integer", {"metrics": {"top_processes": True}},
     "metrics.top_processes: expected an integer in [0, 1000], got true"),
    ("string-for-bool", {"daemon": {"dry_run": "yes"}}, 'daemon.dry_run: expected true or false, got "yes"'),
    ("log-level", {"daemon": {"log_level": "verbose"}},
     'daemon.log_level: expected one of "debug", "info", "warning", "error", "critical", got "verbose"'),
    ("relative-runtime-dir", {"daemon": {"runtime_dir": "run/autonumad"}},
     'daemon.runtime_dir: expected an absolute path, got "run/autonumad"'),
    ("bad-regex-names-index", {"balance": {"exclude_comm": ["ok", "fine", "("]}},
     'balance.exclude_comm[2]: bad regular expression "(": missing ), unterminated subpattern at position 0'),
    ("empty-regex", {"balance": {"include_comm": [""]}},
     "balance.include_comm[0]: empty regular expression would match every command"),
    ("regex-not-a-list", {"balance": {"exclude_comm": "java"}},
     'balance.exclude_comm: expected a list of a regular expression, got "java"'),
    ("relative-cgroup", {"balance": {"exclude_cgroup": ["system.slice"]}},
     'balance.exclude_cgroup[0]: expected a cgroup path starting with "/", got "system.slice"'),
    ("dotdot-cgroup", {"balance": {"exclude_cgroup": ["/a/../b"]}},
     'balance.exclude_cgroup[0]: cgroup path "/a/../b" must not contain ".."'),
    ("pid-zero", {"balance": {"exclude_pids": [0]}},
     "balance.exclude_pids[0]: expected an integer in [1, 4194304], got 0"),
    ("ambiguous-size", {"balance": {"min_rss_bytes": "300MB"}},
     'balance.min_rss_bytes: ambiguous unit in "300MB": write MiB (binary, 1048576 bytes)'),
    ("numa-balancing-on", {"kernel": {"numa_balancing": "on"}},
     'kernel.numa_balancing: expected "keep", "off", "normal", "tiering", "normal+tiering" '
     'or an integer in [0, 3], got "on"'),
    ("numa-balancing-4", {"kernel": {"numa_balancing": 4}},
     'kernel.numa_balancing: expected "keep", "off", "normal", "tiering", "normal+tiering" '
     "or an integer in [0, 3], got 4"),
    ("demotion-string", {"kernel": {"demotion_enabled": "true"}},
     'kernel.demotion_enabled: expected "keep" or true or false, got "true"'),
    ("wsf-out-of-range", {"kernel": {"watermark_scale_factor": 0}},
     'kernel.watermark_scale_factor: expected "keep" or an integer in [1, 3000], got 0'),
    ("zone-reclaim", {"kernel": {"zone_reclaim_mode": 8}},
     'kernel.zone_reclaim_mode: expected "keep" or an integer in [0, 7], got 8'),
    ("listen-v6-no-brackets", {"metrics": {"listen": "::1:9000"}},
     'metrics.listen: bad address "::1:9000": put IPv6 addresses in brackets, e.g. "[::1]:10117"'),
    ("listen-hostname", {"metrics": {"listen": "localhost:9000"}},
     "metrics.listen: bad address \"localhost:9000\": 'localhost' is not an IP address"),
    ("listen-port", {"metrics": {"listen": "127.0.0.1:70000"}},
     'metrics.listen: bad address "127.0.0.1:70000": port must be in [1, 65535]'),
    ("textfile-suffix", {"metrics": {"textfile": "/tmp/metrics.txt"}},
     'metrics.textfile: expected an absolute path ending in .prom or "" for none, got "/tmp/metrics.txt"'),
    ("tracker", {"tiering": {"tracker": "idlepage"}},
     'tiering.tracker: expected one of "auto", "damon", "softdirty", got "idlepage"'),
    ("node-list-syntax", {"tiering": {"fast_nodes": "0-"}},
     "tiering.fast_nodes: bad node list \"0-\": bad list item '0-'"),
    ("node-id-range", {"tiering": {"slow_nodes": [0, 5000]}},
     "tiering.slow_nodes[1]: expected a node id in [0, 1023], got 5000"),
    ("demote-to-self", {"tiering": {"demotion_targets": {"0": 0}}},
     "tiering.demotion_targets.0: a node cannot be its own demotion target"),
    ("demote-key", {"tiering": {"demotion_targets": {"dram": 2}}},
     "tiering.demotion_targets.dram: expected a node id in [0, 1023] as the key"),
    ("headroom-too-big", {"tiering": {"headroom": "60%"}},
     'tiering.headroom: expected a size ("512MiB") or a percentage of the node up to 50% ("5%"), got "60%"'),
    ("unknown-key-suggests", {"balance": {"target_local_fraktion": 0.9}},
     "balance.target_local_fraktion: unknown key (did you mean target_local_fraction?)"),
    ("unknown-key", {"daemon": {"pidfile": "/run/x.pid"}}, "daemon.pidfile: unknown key"),
    ("unknown-section", {"sysctl": {"x": 1}}, "sysctl: unknown section"),
    ("key-outside-section", {"interval_s": 5},
     "interval_s: unknown key (keys belong in a section: did you mean daemon.interval_s?)"),
    ("section-not-a-table", {"daemon": 5}, "daemon: expected a table [daemon], got 5"),
]


@pytest.mark.parametrize("raw,expected", [v[1:] for v in INVALID], ids=[v[0] for v in INVALID])
def test_invalid_value_is_reported_with_path_and_reason(raw, expected):
    assert errors_of(raw) == [expected]


# -- rules between keys -----------------------------------------------------------------------

CROSS = [
    ("scan-period-order", {"kernel": {"scan_period_min_ms": 5000, "scan_period_max_ms": 1000}},
     "kernel.scan_period_min_ms: must not exceed kernel.scan_period_max_ms (1000), got 5000"),
    ("fast-slow-overlap", {"tiering": {"fast_nodes": [0, 1], "slow_nodes": [1, 2]}},
     "tiering.slow_nodes: node(s) [1] are also in tiering.fast_nodes"),
    ("demotion-source-not-fast", {"tiering": {"fast_nodes": [0], "slow_nodes": [2],
                                              "demotion_targets": {"1": 2}}},
     "tiering.demotion_targets.1: node 1 is not in tiering.fast_nodes"),
    ("demotion-target-not-slow", {"tiering": {"slow_nodes": [2], "demotion_targets": {"0": 3}}},
     "tiering.demotion_targets.0: target 3 is not in tiering.slow_nodes"),
    ("headroom-below-min", {"tiering": {"headroom": "0.1%"}},
     "tiering.headroom_min: must not exceed tiering.headroom (0.1%), got 0.5%"),
    ("headroom-above-max-bytes", {"tiering": {"headroom": "2GiB", "headroom_max": "1GiB", "headroom_min": 0}},
     "tiering.headroom: must not exceed tiering.headroom_max (1GiB), got 2GiB"),
    ("damon-intervals", {"tiering": {"damon_sample_us": 20000, "damon_aggr_us": 10000}},
     "tiering.damon_aggr_us: must be at least tiering.damon_sample_us (20000), got 10000"),
    ("exchange-after-cold", {"tiering": {"cold_age_s": 10, "exchange_age_s": 20}},
     "tiering.exchange_age_s: must not exceed tiering.cold_age_s (10), got 20"),
]


@pytest.mark.parametrize("raw,expected", [v[1:] for v in CROSS], ids=[v[0] for v in CROSS])
def test_cross_key_rule(raw, expected):
    assert errors_of(raw) == [expected]


def test_cross_rules_allow_mixed_headroom_units_and_skip_invalid_keys():
    # A size and a percentage cannot be ordered without a node size: allowed.
    cfg = compile_config({"tiering": {"headroom": "1GiB", "headroom_min": "1%", "headroom_max": "20%"}})
    assert cfg.tiering.headroom == Amount(bytes=1 << 30)
    # A key that failed its own check is not reported a second time by a rule.
    assert errors_of({"kernel": {"scan_period_min_ms": "x", "scan_period_max_ms": 5}}) == [
        'kernel.scan_period_min_ms: expected "keep" or an integer in [1, 3600000], got "x"']


def test_all_errors_reported_at_once():
    text = """
    bogus = 1
    [daemon]
    interval_s = 0
    log_level = "loud"
    [balance]
    exclude_comm = ["(", "ok", "["]
    [kernel]
    numa_balancing = "on"
    """
    with pytest.raises(ConfigError) as exc:
        compile_text(text)
    paths = [e.split(":")[0] for e in exc.value.errors]
    assert paths == ["bogus", "daemon.interval_s", "daemon.log_level", "balance.exclude_comm[0]",
                     "balance.exclude_comm[2]", "kernel.numa_balancing"]
    assert str(exc.value).startswith("6 errors: bogus: unknown key")


# -- kernel knobs ---------------------------------------------------------------------------


def test_desired_lists_only_non_keep_knobs_by_shared_name():
    cfg = compile_config({"kernel": {"numa_balancing": "off", "demotion_enabled": True,
                                     "scan_size_mb": 512, "restore_on_exit": False}})
    assert cfg.kernel.desired() == {"numa_balancing": 0, "demotion_enabled": True, "scan_size_mb": 512}
    assert KernelConfig().desired() == {}


def test_knob_names_are_kernel_config_fields():
    names = {f.name for f in dataclasses.fields(KernelConfig)}
    assert set(KNOB_NAMES) <= names
    assert names - set(KNOB_NAMES) == {"restore_on_exit", "enforce"}


def test_desired_sets_every_knob_when_none_kept():
    raw = {"kernel": {name: 1 for name in KNOB_NAMES}}
    raw["kernel"]["demotion_enabled"] = False
    assert set(compile_config(raw).kernel.desired()) == set(KNOB_NAMES)


# -- sizes, amounts, addresses --------------------------------------------------------------------

SIZES = [
    ("int", 4096, 4096), ("digits", "4096", 4096), ("bytes-unit", "10B", 10),
    ("kib", "4KiB", 4096), ("k", "4K", 4096), ("lower", "2mib", 2 << 20),
    ("gib-space", "1 GiB", 1 << 30), ("fraction", "1.5GiB", 3 << 29), ("tib", "2TiB", 2 << 40),
    ("rounds-down", "0.1KiB", 102), ("zero", 0, 0),
]


@pytest.mark.parametrize("text,expected", [s[1:] for s in SIZES], ids=[s[0] for s in SIZES])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


BAD_SIZES = [
    ("mb-ambiguous", "512MB", "ambiguous unit"), ("gb-ambiguous", "1gb", "ambiguous unit"),
    ("unknown-unit", "3 parsecs", "unknown unit"), ("negative", "-1", "bad size"),
    ("negative-int", -1, "out of range"), ("fractional-bytes", "1.5", "whole number"),
    ("empty", "", "bad size"), ("bool", True, "expected a size"), ("float", 1.5, "expected a size"),
    ("huge", "99999999TiB", "out of range"), ("percent", "5%", "bad size"),
]


@pytest.mark.parametrize("text,reason", [s[1:] for s in BAD_SIZES], ids=[s[0] for s in BAD_SIZES])
def test_parse_size_rejects(text, reason):
    with pytest.raises(ParseError, match=reason):
        parse_size(text)


@given(st.integers(min_value=0, max_value=1 << 50))
def test_format_size_round_trips(n):
    assert parse_size(format_size(n)) == n


@given(st.one_of(st.text(max_size=30), st.from_regex(r"\s*-?[0-9]{0,6}(\.[0-9]{0,4})?\s*[a-zA-Z%]{0,4}\s*")))
def test_parse_size_raises_only_parse_error(text):
    try:
        n = parse_size(text)
    except ParseError:
        return
    assert isinstance(n, int) and n >= 0


def test_amount_resolves_against_node_size():
    assert parse_amount("5%").resolve_bytes(1000 << 20) == 50 << 20
    assert parse_amount("512MiB").resolve_bytes(1 << 40) == 512 << 20
    assert str(parse_amount("5%")) == "5%" and str(parse_amount(3 << 30)) == "3GiB"
    with pytest.raises(ValueError):
        Amount()


@given(st.floats(min_value=0, max_value=1, allow_nan=False))
def test_amount_text_round_trips(fraction):
    a = Amount(fraction=fraction)
    assert parse_amount(str(a)) == a


LISTEN = [
    ("v4", "127.0.0.1:10117", ("127.0.0.1", 10117)),
    ("v6", "[::1]:9000", ("::1", 9000)),
    ("any", "0.0.0.0:80", ("0.0.0.0", 80)),
    ("off", "", None),
]


@pytest.mark.parametrize("text,expected", [v[1:] for v in LISTEN], ids=[v[0] for v in LISTEN])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


BAD_LISTEN = ["127.0.0.1", ":9000", "[::1]", "[127.0.0.1]:9000", "1.2.3.4:0", "1.2.3.4:+80",
              "1.2.3.4:８０", "[::1]:99999", "host:80"]


@pytest.mark.parametrize("text", BAD_LISTEN, ids=BAD_LISTEN)
def test_parse_listen_rejects(text):
    with pytest.raises(ParseError, match="bad address"):
        parse_listen(text)


@given(st.one_of(st.text(max_size=40), st.from_regex(r"\[?[0-9a-f:.]{0,20}\]?:[0-9+-]{0,7}")))
def test_parse_listen_raises_only_parse_error(text):
    try:
        result = parse_listen(text)
    except ParseError:
        return
    assert result is None or (isinstance(result[0], str) and 1 <= result[1] <= 65535)


@given(st.one_of(st.text(max_size=30), st.integers(), st.from_regex(r"\s*[0-9]{0,4}(\.[0-9]{0,3})?\s*%?\s*")))
def test_parse_amount_raises_only_parse_error(value):
    try:
        a = parse_amount(value)
    except ParseError:
        return
    assert (a.bytes is not None and a.bytes >= 0) or (a.fraction is not None and 0 <= a.fraction <= 1)


def test_default_listen_is_loopback_on_documented_port():
    assert Config().metrics.listen_address() == ("127.0.0.1", DEFAULT_METRICS_PORT)


# -- selection rules (plan/selection.py) --------------------------------------------------------------------------

@pytest.mark.parametrize("path,prefix,under", [
    ("/a/b", "/a", True), ("/a", "/a", True), ("/ab", "/a", False), ("/x", "/", True), ("/", "/a", False),
], ids=["child", "self", "sibling-prefix", "root-covers-all", "parent"])
def test_cgroup_under(path, prefix, under):
    assert cgroup_under(path, prefix) is under


def test_demotion_target_lookup():
    t = compile_config({"tiering": {"demotion_targets": {"0": 2}}}).tiering
    assert t.demotion_target(0) == 2 and t.demotion_target(1) is None


# -- parse stage ----------------------------------------------------------------------------------


@pytest.mark.parametrize("data,reason", [
    (b"[daemon]\ninterval_s = \n", "TOML syntax: Invalid value (at line 2, column 14)"),
    (b"[daemon]\n[daemon]\n", "TOML syntax: Cannot declare ('daemon',) twice (at line 2"),  # the column differs between Python patch releases
    (b"a = \"\xff\"\n", "not UTF-8 (byte 5); TOML files must be UTF-8"),
], ids=["missing-value", "duplicate-table", "not-utf8"])
def test_parse_errors(data, reason):
    with pytest.raises(ConfigError) as exc:
        parse_toml(data)
    assert len(exc.value.errors) == 1 and exc.value.errors[0].startswith(reason)


# -- property tests: nothing but ConfigError, and valid configs round-trip ----------------------

_toml_scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(),
    st.text(max_size=20), st.sampled_from(["keep", "off", "5%", "64MiB", "127.0.0.1:1", "/x", "^a", "0-1"]),
)
_toml_values = st.recursive(_toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=8)
_known_keys = st.sampled_from(sorted({f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}))
_section_tables = st.dictionaries(st.one_of(_known_keys, st.text(max_size=10)), _toml_values, max_size=6)
_documents = st.dictionaries(
    st.one_of(st.sampled_from(sorted(SECTIONS)), st.text(max_size=8)),
    st.one_of(_section_tables, _toml_values), max_size=5)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_compile_raises_only_config_error_and_round_trips(raw):
    try:
        cfg = compile_config(raw)
    except ConfigError as e:
        assert e.errors and all(isinstance(x, str) and ": " in x for x in e.errors)
        return
    assert compile_config(config_to_dict(cfg)) == cfg


@given(st.text(max_size=200))
def test_parse_toml_raises_only_config_error(text):
    try:
        raw = parse_toml(text)
    except ConfigError:
        return
    assert isinstance(raw, dict)


@given(st.binary(max_size=200))
def test_parse_toml_bytes_raises_only_config_error(data):
    try:
        parse_toml(data)
    except ConfigError:
        pass


def test_truncated_sample_raises_only_config_error():
    # Every prefix of the real sample file either compiles or fails cleanly.
    text = SAMPLE.read_text()
    for cut in range(0, len(text), 7):
        try:
            compile_text(text[:cut])
        except ConfigError:
            pass


# -- load_config: files, defaults, security ---------------------------------------------------------


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return d


def test_load_missing_default_gives_defaults_and_logs(confdir, caplog):
    caplog.set_level(logging.INFO, logger="autonumad.service.config")
    assert load_config(default_path=confdir / "autonumad.toml") == Config()
    assert "no config file" in caplog.text


def test_load_missing_explicit_path_is_an_error(confdir):
    with pytest.raises(ConfigError) as exc:
        load_config(confdir / "nope.toml")
    assert exc.value.errors == ["no such file"] and exc.value.path == str(confdir / "nope.toml")


def test_load_reads_and_compiles(confdir):
    p = write(confdir / "a.toml", '[daemon]\ninterval_s = 2\n[kernel]\nnuma_balancing = "off"\n')
    cfg = load_config(p)
    assert cfg.daemon.interval_s == 2.0 and cfg.kernel.desired() == {"numa_balancing": 0}


def test_load_errors_name_the_file(confdir):
    p = write(confdir / "a.toml", "[daemon]\ninterval_s = 0\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value) == f"{p}: daemon.interval_s: expected a number in [0.5, 3600], got 0"


def _dropin(confdir: Path, name: str, text: str, mode: int = 0o644) -> Path:
    d = confdir / "conf.d"
    d.mkdir(mode=0o755, exist_ok=True)
    d.chmod(0o755)
    return write(d / name, text, mode)


def test_dropins_override_in_name_order(confdir):
    p = write(confdir / "autonumad.toml", '[daemon]\ninterval_s = 2\n[balance]\nexclude_comm = ["^a$"]\n')
    _dropin(confdir, "20-site.toml", "[daemon]\ninterval_s = 7\n")
    _dropin(confdir, "10-tiering.toml", '[daemon]\ninterval_s = 5\nlog_level = "debug"\n'
                                        '[balance]\nexclude_comm = ["^b$"]\n[tiering]\ncold_age_s = 60\n')
    _dropin(confdir, "README", "not toml, not read")
    cfg = load_config(p)
    assert (cfg.daemon.interval_s, cfg.daemon.log_level) == (7.0, "debug")  # 20- after 10-, key by key
    assert [rx.pattern for rx in cfg.balance.exclude_comm] == ["^b$"]  # lists are replaced, not appended
    assert cfg.tiering.cold_age_s == 60.0


def test_dropins_alone_at_the_default_path(confdir):
    _dropin(confdir, "10-a.toml", "[daemon]\ninterval_s = 3\n")
    assert load_config(default_path=confdir / "autonumad.toml").daemon.interval_s == 3.0


def test_an_error_in_a_dropin_names_it(confdir):
    p = write(confdir / "autonumad.toml", '[tiering]\nheadroom = "1%"\n')
    d = _dropin(confdir, "10-tiering.toml", '[tiering]\nheadroom_min = "5%"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert exc.value.errors == [f"tiering.headroom_min (set in {d}): must not exceed tiering.headroom (1%), got 5%"]
    bad = _dropin(confdir, "30-broken.toml", "[daemon\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert exc.value.path == str(bad) and exc.value.errors[0].startswith("TOML syntax")


def test_a_dropin_others_can_write_is_refused(confdir):
    p = write(confdir / "autonumad.toml", "")
    d = _dropin(confdir, "10-a.toml", "", mode=0o666)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert exc.value.path == str(d) and "steers a root daemon" in exc.value.errors[-1]


def test_load_the_shipped_sample(confdir):
    p = write(confdir / "autonumad.toml", SAMPLE.read_text())
    assert load_config(p) == Config()


@pytest.mark.parametrize("mode,who", [(0o664, "group"), (0o646, "others"), (0o666, "group and others")],
                         ids=["group", "others", "both"])
def test_load_refuses_writable_by_others(confdir, mode, who):
    p = write(confdir / "a.toml", "", mode)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert exc.value.errors[0] == f"the file has mode {mode:04o}, writable by {who} (chmod go-w)"
    assert "steers a root daemon" in exc.value.errors[-1]
    assert load_config(p, require_secure=False) == Config()


def test_load_refuses_a_writable_directory(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o777)
    p = write(d / "a.toml", "")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert exc.value.errors[0] == f"its directory {d} has mode 0777, writable by group and others (chmod go-w)"


def test_load_accepts_a_sticky_directory(tmp_path):
    # /tmp-like: others may create files but not replace ours.
    d = tmp_path / "sticky"
    d.mkdir()
    d.chmod(0o1777)
    assert load_config(write(d / "a.toml", "")) == Config()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_load_refuses_a_file_owned_by_another_user(confdir):
    p = write(confdir / "a.toml", "")
    os.chown(p, 65534, 65534)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert exc.value.errors[0] == "the file is owned by uid 65534, must be owned by root"


def test_load_refuses_a_fifo(confdir):
    p = confdir / "fifo.toml"
    os.mkfifo(p, 0o600)
    with pytest.raises(ConfigError) as exc:
        load_config(p)  # must not block waiting for a writer
    assert exc.value.errors == ["not a regular file"]


def test_load_refuses_a_huge_file(confdir):
    p = write(confdir / "big.toml", "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(p)


def _stat(uid: int, mode: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


@pytest.mark.parametrize("uid,mode,trusted,expected", [
    (0, stat.S_IFREG | 0o644, {0}, []),
    (0, stat.S_IFREG | 0o600, {0, 1000}, []),
    (1000, stat.S_IFREG | 0o644, {0, 1000}, []),
    (1000, stat.S_IFREG | 0o644, {0}, ["f is owned by uid 1000, must be owned by root"]),
    (0, stat.S_IFREG | 0o620, {0}, ["f has mode 0620, writable by group (chmod go-w)"]),
    (0, stat.S_IFDIR | 0o1777, {0}, []),
    (0, stat.S_IFREG | 0o1777, {0}, ["f has mode 1777, writable by group and others (chmod go-w)"]),
], ids=["root-0644", "root-0600", "own-user", "other-user", "group-write", "sticky-dir", "sticky-file"])
def test_security_problems(uid, mode, trusted, expected):
    assert security_problems(_stat(uid, mode), "f", trusted_uids=trusted) == expected


def test_config_error_one_line():
    assert str(ConfigError(["a.b: x"], path="/etc/f")) == "/etc/f: a.b: x"
    assert str(ConfigError(["a.b: x", "c.d: y"])) == "2 errors: a.b: x; c.d: y"


def test_balance_section_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BalanceConfig().enabled = False  # type: ignore[misc]
