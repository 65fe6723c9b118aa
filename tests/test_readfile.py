"""The one bounded read of a regular file (tproxy_firewalld.readfile) and what its callers
make of each outcome: one line each, the callers' own words."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tproxy_firewalld.errors import FileError, SettingsError
from tproxy_firewalld.fwconf import read_conf
from tproxy_firewalld.kuma import KumaSettings
from tproxy_firewalld.readfile import NotRegular, NotRootOwned, TooLarge, read_regular
from tproxy_firewalld.record import RecordError, read_record


def test_read_regular_outcomes(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"12345")
    assert read_regular(f, 5) == b"12345"
    with pytest.raises(TooLarge):
        read_regular(f, 4)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes to it: a blocking open would hang here
    with pytest.raises(NotRegular):
        read_regular(fifo, 10)
    with pytest.raises(NotRegular):
        read_regular(tmp_path, 10)
    link = tmp_path / "link"
    link.symlink_to(f)
    assert read_regular(link, 10) == b"12345"
    with pytest.raises(OSError) as info:
        read_regular(link, 10, follow=False)
    assert info.value.errno == errno.ELOOP
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "absent", 10)


def test_read_regular_root_owned(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"{}")
    f.chmod(0o644)
    if os.geteuid() == 0:
        assert read_regular(f, 10, root_owned=True) == b"{}"
    f.chmod(0o664)  # group-writable: not trusted, whoever owns it
    with pytest.raises(NotRootOwned):
        read_regular(f, 10, root_owned=True)
    f.chmod(0o644)
    if os.geteuid() == 0:
        os.chown(f, 1, 1)
        with pytest.raises(NotRootOwned):
            read_regular(f, 10, root_owned=True)


def test_a_config_file_over_the_limit_in_multibyte_text_is_refused_as_too_large(
    tmp_path: Path,
) -> None:
    """Was: the limit counted characters of the first limit+1 bytes, so a file of more than
    the limit in bytes but fewer characters was cut silently, or refused as "not UTF-8"."""
    for pad in (b"", b"#"):  # the cut falls inside a character, or between two
        big = tmp_path / "big.yaml"
        big.write_bytes(pad + "é".encode() * (600 * 1024))  # 1.2 MB, 614400 characters
        with pytest.raises(SettingsError) as info:
            KumaSettings.load(config_files=[str(big)])
        message = str(info.value)
        assert message == (f"configuration file '{big}' is larger than 1048576 bytes; refused"), (
            message
        )


@pytest.mark.parametrize("what", ["fifo", "dir", "big"])
def test_record_and_firewalld_conf_refusals_keep_their_words(tmp_path: Path, what: str) -> None:
    path = tmp_path / "x"
    if what == "fifo":
        os.mkfifo(path)
    elif what == "dir":
        path.mkdir()
    else:
        path.write_bytes(b"#" * (16 * 1024 * 1024 + 1))
    with pytest.raises(RecordError) as rec:
        read_record(path)
    with pytest.raises(FileError) as conf:
        read_conf(path)
    if what == "big":
        assert str(rec.value).endswith("bytes; not a record of ours")
        assert str(conf.value).endswith("bytes; not a firewalld.conf")
    else:
        assert str(rec.value) == str(conf.value) == f"{path}: is not a regular file"
