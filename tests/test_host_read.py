"""The Host's read path: plain-string paths, bytes read to EOF, decoded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autonumad.errors import ProcessGone
from autonumad.host import Host, LinuxHost


def tree(root: Path, files: dict[str, bytes]) -> None:
    for host_path, data in files.items():
        p = root / host_path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


CONTENTS = [
    ("empty", b"", ""),
    ("one-line", b"numa_hit 12\n", "numa_hit 12\n"),
    # Several read(2) calls: larger than one 64 KiB chunk, not a multiple of it.
    ("multi-chunk", b"7f00 default N0=1\n" * 10_000, "7f00 default N0=1\n" * 10_000),
    # A file name with a carriage return on a numa_maps line: binary reads do
    # no newline translation, so the line is not cut in two.
    ("carriage-return-kept", b"1000 default file=/tmp/a\rb N0=1\n", "1000 default file=/tmp/a\rb N0=1\n"),
    ("utf8-name", "Name:\tcaf\u00e9\n".encode(), "Name:\tcaf\u00e9\n"),
]


@pytest.mark.parametrize("data,text", [c[1:] for c in CONTENTS], ids=[c[0] for c in CONTENTS])
def test_read_text(tmp_path: Path, data, text):
    tree(tmp_path, {"/proc/1/numa_maps": data})
    assert Host(tmp_path).read_text("/proc/1/numa_maps") == text


def test_invalid_utf8_survives_byte_exact(tmp_path: Path):
    # A comm or a file name is bytes to the kernel; surrogateescape keeps them.
    raw = b"Name:\tbad\xff\xfename\n"
    tree(tmp_path, {"/proc/1/status": raw})
    text = Host(tmp_path).read_text("/proc/1/status")
    assert text.encode("utf-8", "surrogateescape") == raw


@pytest.mark.parametrize("root_form", ["plain", "trailing-slash", "relative"])
def test_root_spellings(tmp_path: Path, monkeypatch, root_form):
    tree(tmp_path, {"/proc/vmstat": b"nr_free_pages 1\n"})
    if root_form == "relative":
        monkeypatch.chdir(tmp_path.parent)
        root = tmp_path.name
    else:
        root = str(tmp_path) + ("/" if root_form == "trailing-slash" else "")
    host = Host(root)
    assert host.read_text("/proc/vmstat") == "nr_free_pages 1\n"
    assert host.read_text("proc/vmstat") == "nr_free_pages 1\n"  # leading "/" optional, as for path()
    assert host.exists("/proc/vmstat") and not host.exists("/proc/zoneinfo")
    assert host.listdir("/proc") == ["vmstat"]
    assert isinstance(host.path("/proc/vmstat"), Path)  # tests and actuators still get a Path


def test_missing_files(tmp_path: Path):
    tree(tmp_path, {"/proc/5/status": b"Name:\tx\n"})
    host = Host(tmp_path)
    with pytest.raises(FileNotFoundError):
        host.read_text("/proc/zoneinfo")
    assert host.read_text_or_none("/proc/zoneinfo") is None
    assert host.listdir("/proc/7/task") == []
    with pytest.raises(ProcessGone):
        host.read_proc_text(7, "status")
    with pytest.raises(ProcessGone):
        host.tids(7)


def test_reading_a_directory_is_an_oserror(tmp_path: Path):
    tree(tmp_path, {"/proc/5/status": b""})
    with pytest.raises(IsADirectoryError):
        Host(tmp_path).read_text("/proc/5")


@pytest.mark.skipif(not os.access("/proc/kallsyms", os.R_OK), reason="needs a readable /proc/kallsyms")
def test_live_seq_file_read_to_eof():
    # A multi-megabyte seq_file that reports size 0: read(2) until EOF must
    # return all of it, the same as Python's own file reading.
    with open("/proc/kallsyms", encoding="utf-8", errors="surrogateescape", newline="") as f:
        expected = f.read()
    assert len(expected) > 65536
    assert LinuxHost().read_text("/proc/kallsyms") == expected
