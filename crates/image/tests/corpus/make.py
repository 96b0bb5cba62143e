#!/usr/bin/env python3
"""Writes the corpus of odd but valid layer tars that real tools produce, one file per case,
with Python's tarfile (and GNU tar for the sparse file). Run it from anywhere; it rewrites the
.tar files beside itself. crates/image/tests/corpus.rs imports each and checks the result,
and the unpacker's fuzz target starts from these files.
"""
import io
import os
import subprocess
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MTIME = 1_700_000_000


def info(name, kind=tarfile.REGTYPE, mode=0o644, data=b"", **kw):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.mtime = kw.pop("mtime", MTIME)
    ti.uid = kw.pop("uid", 0)
    ti.gid = kw.pop("gid", 0)
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def write(name, entries, fmt):
    with tarfile.open(os.path.join(HERE, name), "w", format=fmt) as t:
        for ti, f in entries:
            t.addfile(ti, f)


LONG_DIR = "a" * 60 + "/" + "b" * 60
LONG_FILE = LONG_DIR + "/" + "c" * 80 + ".txt"
LONG_TARGET = "/" + "t" * 150


def main():
    # PAX long names and link names (what docker and buildah write).
    write(
        "pax-long-names.tar",
        [
            info(LONG_DIR, tarfile.DIRTYPE, 0o755),
            info(LONG_FILE, data=b"long\n"),
            info("short-link", tarfile.SYMTYPE, 0o777, linkname=LONG_TARGET),
            info(LONG_DIR + "/hard", tarfile.LNKTYPE, linkname=LONG_FILE),
        ],
        tarfile.PAX_FORMAT,
    )
    # GNU long names and link names (././@LongLink entries).
    write(
        "gnu-long-names.tar",
        [
            info(LONG_DIR, tarfile.DIRTYPE, 0o755),
            info(LONG_FILE, data=b"long\n"),
            info("short-link", tarfile.SYMTYPE, 0o777, linkname=LONG_TARGET),
            info(LONG_DIR + "/hard", tarfile.LNKTYPE, linkname=LONG_FILE),
        ],
        tarfile.GNU_FORMAT,
    )
    # Hard links to earlier entries, a chain of them, and one to a symlink.
    write(
        "hard-links.tar",
        [
            info("bin/", tarfile.DIRTYPE, 0o755),
            info("bin/tool", mode=0o755, data=b"#!/bin/sh\n"),
            info("bin/alias1", tarfile.LNKTYPE, linkname="bin/tool"),
            info("bin/alias2", tarfile.LNKTYPE, linkname="./bin/alias1"),
            info("bin/sym", tarfile.SYMTYPE, 0o777, linkname="tool"),
            info("bin/sym-hard", tarfile.LNKTYPE, linkname="bin/sym"),
        ],
        tarfile.PAX_FORMAT,
    )
    # Entries replaced by later ones: file by file, file by directory, directory by file,
    # symlink by file, directory by symlink.
    write(
        "replaced-entries.tar",
        [
            info("f", data=b"first\n"),
            info("f", data=b"second\n"),
            info("becomes-dir", data=b"x"),
            info("becomes-dir", tarfile.DIRTYPE, 0o755),
            info("becomes-dir/inside", data=b"in\n"),
            info("was-dir/", tarfile.DIRTYPE, 0o755),
            info("was-dir/child", data=b"c"),
            info("was-dir", data=b"now a file\n"),
            info("link", tarfile.SYMTYPE, 0o777, linkname="/etc/passwd"),
            info("link", data=b"not a link\n"),
            info("d2/", tarfile.DIRTYPE, 0o755),
            info("d2", tarfile.SYMTYPE, 0o777, linkname="f"),
        ],
        tarfile.PAX_FORMAT,
    )
    # Directories listed after their files, with metadata that must win.
    write(
        "dirs-after-files.tar",
        [
            info("late/sub/file", data=b"f\n"),
            info("late/sub/", tarfile.DIRTYPE, 0o750, uid=7, gid=8, mtime=1_000_000_000),
            info("late/", tarfile.DIRTYPE, 0o711, mtime=1_100_000_000),
        ],
        tarfile.USTAR_FORMAT,
    )
    # Extended attributes as PAX SCHILY.xattr records: file capabilities (ping's
    # cap_net_raw+ep, as Debian's iputils-ping ships it) and a user attribute.
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    ti, f = info("usr/bin/ping", mode=0o755, data=b"#!/bin/sh\n")
    ti.pax_headers = {
        "SCHILY.xattr.security.capability": cap.decode("latin-1"),
        "SCHILY.xattr.user.origin": "corpus",
    }
    # Every byte of the capability is below 0x80, so the UTF-8 PAX record keeps it as is.
    write("xattrs.tar", [(ti, f)], tarfile.PAX_FORMAT)
    # Device nodes and fifos, as base images carry in /dev.
    write(
        "devices.tar",
        [
            info("dev/", tarfile.DIRTYPE, 0o755),
            info("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3),
            info("dev/loop9", tarfile.BLKTYPE, 0o660, devmajor=7, devminor=9, gid=6),
            info("run/initctl", tarfile.FIFOTYPE, 0o600),
        ],
        tarfile.USTAR_FORMAT,
    )
    # setuid, setgid and sticky bits with owners.
    write(
        "special-modes.tar",
        [
            info("usr/bin/su", mode=0o4755, data=b"su", uid=0, gid=0),
            info("usr/bin/wall", mode=0o2755, data=b"wall", gid=5),
            info("tmp/", tarfile.DIRTYPE, 0o1777),
            info("srv/shared/", tarfile.DIRTYPE, 0o2775, gid=50),
        ],
        tarfile.PAX_FORMAT,
    )
    # Names that are not UTF-8 (Latin-1 "café", a lone 0xff byte), in ustar headers.
    raw = [b"caf\xe9.txt", b"dir\xff/inner"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT,
                      encoding="latin-1", errors="strict") as t:
        for r in raw:
            name = r.decode("latin-1")
            ti, f = info(name, data=b"bytes\n")
            t.addfile(ti, f)
    with open(os.path.join(HERE, "non-utf8-names.tar"), "wb") as out:
        out.write(buf.getvalue())
    # Absolute and ./ names, the root entry first (umoci, some builders).
    write(
        "absolute-names.tar",
        [
            info("/", tarfile.DIRTYPE, 0o755),
            info("/etc/", tarfile.DIRTYPE, 0o755),
            info("/etc/hostname", data=b"abs\n"),
            info("./etc/dotted", data=b"dot\n"),
            info("/etc/../etc/./cleaned", data=b"clean\n"),
        ],
        tarfile.PAX_FORMAT,
    )
    # A sparse file (1 MiB with 5 bytes of data at 512 KiB), written by GNU tar in its GNU
    # format, which stores only the data and a map of the holes.
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "sparse.bin")
        with open(p, "wb") as f:
            f.truncate(1 << 20)
            f.seek(512 << 10)
            f.write(b"hello")
        subprocess.run(
            ["tar", "--format=gnu", "--sparse", "--owner=0", "--group=0", "--numeric-owner",
             f"--mtime=@{MTIME}", "-C", d, "-cf", os.path.join(HERE, "sparse.tar"), "sparse.bin"],
            check=True,
        )


if __name__ == "__main__":
    main()
