"""The Debian package (scripts/build-deb), the man pages and the bash and zsh completions.

What runs for real: scripts/build-deb (dpkg-buildpackage with debhelper,
dh-python/pybuild and dh_installsystemd) and lintian on its .deb; groff on
the generated pages; bash and zsh on the generated completions. The build installs
its own build dependencies with apt-get when run as root; where that cannot
happen the build tests skip with the reason, except under CI=true, where
that is a failure (as for promtool in test_metrics.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from autonumad.cli import build_parser
from autonumad.service import manpages
from autonumad.service.config import SECTIONS

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "config" / "autonumad.toml"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _need(tool: str, why: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} not found and CI=true: {why}")
        pytest.skip(f"{tool} not found ({why}); CI=true makes this a failure")
    return path


def _unroff(text: str) -> str:
    """Enough of roff undone to search the page for option and key names."""
    text = re.sub(r"\\f[BIRP]", "", text)
    return text.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("man")
    manpages.write_all(out, SAMPLE)
    return out


# -- man pages ----------------------------------------------------------------------------


def _every_option() -> list[tuple[str, str]]:
    parser = build_parser()
    out = [("", o) for a in parser._actions for o in a.option_strings]
    for name, sub in manpages.subcommands(parser).items():
        for a in sub._actions:
            out += [(name, o) for o in a.option_strings]
            if not a.option_strings:
                out.append((name, manpages._metavar(a)))
            out += [(name, str(c)) for c in (a.choices or ())]
    return out


def test_autonumad8_names_every_command_option_and_choice(generated):
    page = _unroff((generated / "autonumad.8").read_text())
    # Each subcommand's section, from its .SS line to the next, holds its own options.
    sections = dict(re.findall(r"^\.SS (\S+)\n(.*?)(?=^\.SS |^\.SH )", page, flags=re.M | re.S))
    missing = []
    for sub, word in _every_option():
        where = sections.get(sub, "") if sub else page
        if not re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", where):
            missing.append(f"{sub or 'autonumad'}: {word}")
    assert not missing, missing
    assert set(sections) == set(manpages.subcommands(build_parser()))


def test_autonumad8_carries_each_help_text(generated):
    page = " ".join(_unroff((generated / "autonumad.8").read_text()).split())
    for name, sub in manpages.subcommands(build_parser()).items():
        for a in sub._actions:
            if a.help:
                assert " ".join(a.help.split()) in page, (name, a.dest)


def test_toml5_names_every_key_with_default_and_range(generated):
    page = _unroff((generated / "autonumad.toml.5").read_text())
    for section in SECTIONS:
        assert f'.SH "[{section}]"' in page
    for section, key, default, expect in manpages.config_keys():
        block = page.split(f'.SH "[{section}]"', 1)[1].split(".SH ", 1)[0]
        entry = re.search(rf"^\.TP\n{re.escape(key)} = ([^\n]*)\n(.*?)(?=^\.TP|\Z)", block, flags=re.M | re.S)
        assert entry, f"{section}.{key} missing"
        assert entry.group(1) == default, (section, key)
        assert " ".join(expect.split()) in " ".join(entry.group(2).split()), (section, key)


def test_toml5_defaults_are_those_of_the_shipped_sample():
    # The page's defaults come from the code; the sample sets every key to its
    # default (test_config.py); so the page and the shipped file agree too.
    sample = tomllib.loads(SAMPLE.read_text())
    for section, key, default, _ in manpages.config_keys():
        assert tomllib.loads(f"v = {default}")["v"] == sample[section][key], (section, key)


def test_a_key_without_prose_in_the_sample_is_an_error():
    text = SAMPLE.read_text()
    # Drop the comment above tiering.cold_age_s: the page would have nothing to say.
    broken = re.sub(r"(#[^\n]*\n)+(?=cold_age_s =)", "", text)
    assert broken != text
    with pytest.raises(manpages.ManpageError, match="tiering.cold_age_s"):
        manpages.page_autonumad_toml5(broken)


def test_shared_comment_goes_to_every_key_under_it():
    _, intros, prose = manpages.sample_comments(SAMPLE.read_text())
    assert prose["balance.exclude_comm"] == prose["balance.include_comm"] != ""
    assert prose["kernel.scan_size_mb"] == prose["kernel.scan_delay_ms"] != ""
    assert "restored when it stops" in intros["kernel"]
    assert "Kernel knobs set" not in prose["kernel.numa_balancing"]


@pytest.mark.parametrize("page", ["autonumad.8", "autonumad.toml.5"])
def test_pages_render_without_groff_warnings(generated, page):
    groff = _need("groff", "apt-get install groff-base")
    r = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(generated / page)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_manpages_cli_rejects_a_missing_sample(tmp_path, capsys):
    assert manpages.main(["--out", str(tmp_path), "--sample", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


# -- bash completion ----------------------------------------------------------------------


def _complete(script: Path, words: list[str]) -> list[str]:
    bash = _need("bash", "apt-get install bash")
    line = " ".join(words)
    cmd = (f"source {script}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
           f"COMP_CWORD={len(words) - 1}; COMP_LINE={line!r}; _autonumad; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    r = subprocess.run([bash, "--norc", "-c", cmd], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return [w for w in r.stdout.splitlines() if w]


def test_completion_offers_every_subcommand(generated):
    assert set(_complete(generated / "autonumad", ["autonumad", ""])) >= set(manpages.subcommands(build_parser()))
    assert _complete(generated / "autonumad", ["autonumad", "che"]) == ["check-config"]


@pytest.mark.parametrize("words,expected", [
    (["autonumad", "run", "--"], {"--config", "--root", "--interval", "--once", "--dry-run", "--kernel-knobs"}),
    (["autonumad", "run", "--kernel-knobs", ""], {"manage", "external"}),
    (["autonumad", "sysctl", ""], {"show", "apply", "restore", "verify"}),
    (["autonumad", "reload", "--w"], {"--wait"}),
])
def test_completion_from_the_parser(generated, words, expected):
    got = set(_complete(generated / "autonumad", words))
    assert expected <= got, (expected - got)


def test_completion_completes_paths_for_config(generated):
    got = _complete(generated / "autonumad", ["autonumad", "check-config", "config/autonumad.to"])
    assert got == ["config/autonumad.toml"]
    got = _complete(generated / "autonumad", ["autonumad", "run", "--config", "config/autonumad.to"])
    assert got == ["config/autonumad.toml"]


def test_every_option_of_every_subcommand_is_completed(generated):
    for name, sub in manpages.subcommands(build_parser()).items():
        got = set(_complete(generated / "autonumad", ["autonumad", name, "-"]))
        want = {o for a in sub._actions for o in a.option_strings}
        assert want <= got, (name, want - got)


# -- zsh completion -----------------------------------------------------------------------
# zsh's own completion system (compinit, _arguments, _describe) run on a
# command line in an interactive zsh on a pseudo-terminal, with compadd
# wrapped to print the matches (tests/data/zsh/complete.zsh).

ZSH_DRIVER = REPO / "tests" / "data" / "zsh" / "complete.zsh"


def _zsh_complete(fpath_dir: Path, line: str) -> list[str]:
    zsh = _need("zsh", "apt-get install zsh")
    r = subprocess.run([zsh, "-f", str(ZSH_DRIVER), str(fpath_dir), line], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0 and "<done>" in r.stdout, (r.returncode, r.stdout[-2000:], r.stderr)
    return re.findall(r"<match>([^<\r\n]*)</match>", r.stdout)


def test_zsh_completion_parses(generated):
    zsh = _need("zsh", "apt-get install zsh")
    r = subprocess.run([zsh, "-n", str(generated / "_autonumad")], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (generated / "_autonumad").read_text().startswith("#compdef autonumad\n")


def test_zsh_completion_offers_every_subcommand_and_top_option(generated):
    parser = build_parser()
    assert set(_zsh_complete(generated, "autonumad ")) == set(manpages.subcommands(parser))
    want = {o for a in parser._actions for o in a.option_strings}
    assert want <= set(_zsh_complete(generated, "autonumad -"))


def test_every_option_of_every_subcommand_is_in_the_zsh_completion(generated):
    for name, sub in manpages.subcommands(build_parser()).items():
        got = set(_zsh_complete(generated, f"autonumad {name} -"))
        want = {o for a in sub._actions for o in a.option_strings}
        assert want <= got, (name, want - got)


@pytest.mark.parametrize("line,expected", [
    ("autonumad run --kernel-knobs ", {"manage", "external"}),
    ("autonumad sysctl ", {"show", "apply", "restore", "verify"}),
    ("autonumad run --config config/autonumad.to", {"autonumad.toml"}),
    ("autonumad check-config config/autonumad.to", {"autonumad.toml"}),
    ("autonumad status --root scri", {"scripts"}),
])
def test_zsh_completion_of_values(generated, line, expected):
    assert set(_zsh_complete(generated, line)) == expected


# -- the Debian package -------------------------------------------------------------------


@pytest.fixture(scope="module")
def deb() -> tuple[Path, str]:
    """Build the package once, with lintian; (path, lintian output)."""
    if shutil.which("dpkg-buildpackage") is None and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        _need("dpkg-buildpackage", "scripts/build-deb installs its build dependencies only as root with apt-get")
    r = subprocess.run([str(REPO / "scripts" / "build-deb"), "--lintian"], capture_output=True, text=True,
                       cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    path = REPO / "dist" / f"autonumad_{VERSION}_all.deb"
    assert path.is_file(), r.stdout
    return path, r.stdout + r.stderr


def _deb_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def test_deb_is_lintian_clean_or_justified(deb):
    _, out = deb
    # build-deb ran lintian with --fail-on error,warning; also no info tag may
    # be left unexplained (overrides carry their reason in a comment).
    tags = [l for l in out.splitlines() if re.match(r"^[EWI]: ", l)]
    assert not tags, tags
    overrides = (REPO / "scripts" / "debian" / "autonumad.lintian-overrides").read_text().splitlines()
    for i, line in enumerate(overrides):
        if line.startswith("autonumad:"):
            assert i > 0 and overrides[i - 1].startswith("#"), f"override without a reason: {line}"


EXPECTED_FILES = [
    "./usr/bin/autonumad",
    "./lib/systemd/system/autonumad.service",
    "./usr/lib/tmpfiles.d/autonumad.conf",
    "./etc/autonumad/autonumad.toml",
    "./usr/share/autonumad/prometheus/autonumad-rules.yml",
    "./usr/share/autonumad/grafana/autonumad-dashboard.json",
    "./usr/share/doc/autonumad/operations.md",
    "./usr/share/doc/autonumad/metrics.md",
    "./usr/share/doc/autonumad/copyright",
    "./usr/share/man/man8/autonumad.8.gz",
    "./usr/share/man/man5/autonumad.toml.5.gz",
    "./usr/share/bash-completion/completions/autonumad",
    "./usr/share/zsh/vendor-completions/_autonumad",
    "./usr/lib/python3/dist-packages/autonumad/cli.py",
]


def test_deb_contents(deb):
    path, _ = deb
    listing = subprocess.run(["dpkg-deb", "-c", str(path)], capture_output=True, text=True, check=True).stdout
    files = {line.split()[-1] for line in listing.splitlines()}
    missing = [f for f in EXPECTED_FILES if f not in files]
    assert not missing, missing
    # The unit's Documentation= names operations.md: it must not be gzipped.
    assert "./usr/share/doc/autonumad/operations.md.gz" not in files
    # Nothing from the test suite or the developer's tree.
    assert not [f for f in files if "/tests/" in f or ".venv" in f or "__pycache__" in f]


def test_deb_unit_and_config_are_the_trees(deb, tmp_path):
    path, _ = deb
    subprocess.run(["dpkg-deb", "-x", str(path), str(tmp_path)], check=True)
    assert (tmp_path / "lib/systemd/system/autonumad.service").read_text() == \
        (REPO / "systemd/autonumad.service").read_text()
    assert (tmp_path / "etc/autonumad/autonumad.toml").read_bytes() == SAMPLE.read_bytes()
    assert (tmp_path / "usr/lib/tmpfiles.d/autonumad.conf").read_text() == \
        (REPO / "systemd/autonumad.tmpfiles").read_text()


def test_deb_metadata_and_maintainer_scripts(deb, tmp_path):
    path, _ = deb
    assert _deb_field(path, "Version") == VERSION
    depends = _deb_field(path, "Depends")
    for dep in ("python3-prometheus-client", "python3-rich"):
        assert dep in depends
    subprocess.run(["dpkg-deb", "-e", str(path), str(tmp_path / "ctl")], check=True)
    ctl = tmp_path / "ctl"
    assert (ctl / "conffiles").read_text().split() == ["/etc/autonumad/autonumad.toml"]
    postinst, prerm, postrm = ((ctl / n).read_text() for n in ("postinst", "prerm", "postrm"))
    # enabled and started on install, restarted on upgrade
    assert "deb-systemd-helper enable 'autonumad.service'" in postinst
    assert "_dh_action=restart" in postinst and "_dh_action=start" in postinst
    # the tmpfiles entry applied at once
    assert "systemd-tmpfiles" in postinst and "autonumad.conf" in postinst
    # stopped (ExecStopPost= restores the knobs) on removal only, not on upgrade
    assert re.search(r'"\$1" = remove .*\n\s*deb-systemd-invoke stop .autonumad.service.', prerm)
    # purge removes the runtime state and the enablement
    assert "rm -rf /run/autonumad" in postrm
    assert "deb-systemd-helper purge 'autonumad.service'" in postrm


def test_build_deb_rejects_an_unknown_option():
    r = subprocess.run([str(REPO / "scripts" / "build-deb"), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown option --bogus" in r.stderr


def test_packaged_daemon_serves_metrics_on_debians_own_libraries(deb, tmp_path):
    """The .deb's code on Debian's python3 with python3-prometheus-client and python3-rich.

    Debian 12 ships client_python 0.16, older than what pip installs into
    the venv the rest of the suite uses; a call only newer versions have
    (start_http_server returning the server, disable_created_metrics) failed
    the unit at start in the systemd guest. dh_python3 drops pyproject's
    version bounds, so only running the packaged code finds this.
    """
    import socket
    import time
    import urllib.request

    path, _ = deb
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(path), str(root)], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "autonumad.toml"
    cfg.write_text(f'[daemon]\ninterval_s = 1.0\nruntime_dir = "{tmp_path}/run"\n'
                   f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    cfg.chmod(0o600)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root / "usr/lib/python3/dist-packages")}
    # -s: no user site; Debian's interpreter, so dist-packages are Debian's packages.
    daemon = subprocess.Popen(["/usr/bin/python3", "-s", str(root / "usr/bin/autonumad"), "run", "--dry-run",
                               "--config", str(cfg)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "run" / "state.json").exists():
            assert daemon.poll() is None, daemon.stderr.read()
            assert time.monotonic() < deadline, "no first pass within 60 s"
            time.sleep(0.2)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        daemon.terminate()
        rc = daemon.wait(30)
    assert rc == 0, daemon.stderr.read()
    assert "autonumad_build_info" in body
    assert "_created" not in body
