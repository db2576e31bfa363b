"""Release archives: what `ota publish` packs unpacks to the same release;
whatever else an upload holds is refused before anything lands outside
the folder it is unpacked into."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from gateway.archive import pack_release, unpack_release
from gateway.errors import ReleaseRefusedError
from ota.release import Release, check_blobs, read


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **over: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in over.items():
        setattr(info, k, v)
    return info


def test_a_packed_release_unpacks_to_the_same_release(release: Release, tmp_path: Path) -> None:
    unpack_release(pack_release(release), tmp_path / "out")
    again = read(tmp_path / "out")
    check_blobs(again)
    assert again.manifest == release.manifest
    assert sorted(p.name for p in (tmp_path / "out" / "blobs").iterdir()) == sorted(
        {f"{f.sha256}.z" for f in release.files}
    )


def test_leading_dot_slash_and_folder_entries_are_fine(release: Release, tmp_path: Path) -> None:
    data = tar_of(
        (member("./", tarfile.DIRTYPE), None),
        (member("./blobs", tarfile.DIRTYPE), None),
        (member("./manifest.json"), release.manifest),
    )
    unpack_release(data, tmp_path / "out")
    assert (tmp_path / "out" / "manifest.json").read_bytes() == release.manifest


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([(member("../evil.json"), b"x")], "leaves the release folder"),
        ([(member("blobs/../../evil"), b"x")], "leaves the release folder"),
        ([(member("/etc/evil"), b"x")], "leaves the release folder"),
        ([(member("blobs/x.z", tarfile.SYMTYPE, linkname="/etc/passwd"), None)], "not a regular file"),
        ([(member("manifest.json", tarfile.LNKTYPE, linkname="/etc/passwd"), None)], "not a regular file"),
        ([(member("blobs/dev", tarfile.CHRTYPE), None)], "not a regular file"),
        ([(member("boot.py"), b"import os")], "only manifest.json"),
        ([(member("blobs/notahash.z"), b"x")], "only manifest.json"),
        ([(member("manifest.json"), b"{}"), (member("manifest.json"), b"{}")], "appears twice"),
        ([(member("manifest.json"), b" " * 20000)], "more than 16384"),
        ([(member("blobs/" + "a" * 64 + ".z"), b"x")], "no manifest.json"),
    ],
)
def test_a_bad_archive_is_refused(
    members: list[tuple[tarfile.TarInfo, bytes | None]], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ReleaseRefusedError, match=message) as exc:
        unpack_release(tar_of(*members), tmp_path / "out")
    assert exc.value.code == "bad_archive"
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "evil").exists()


def test_something_that_is_not_a_tar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReleaseRefusedError, match="bad release archive"):
        unpack_release(b"PK\x03\x04 a zip, not a tar" * 40, tmp_path / "out")
