#!/usr/bin/env python3
"""Which B-trees a SQLite database's commits write: the pages in its WAL, per commit, by owner.

Usage: bench/wal-pages.py DATABASE [TOP]

Reads DATABASE-wal as it is (the frames of the WAL's current generation, up to the last
commit), copies DATABASE aside to name each page's table or index (SQLite's `dbstat`), and
prints the frames a commit wrote, on average, for each. Run it on a stopped instance's files
(`BENCH_KEEP_TMP=1 bench/run.sh` keeps them): it opens only copies, so the WAL is not
checkpointed away. A page that changed owner since (a freed page used again) is named by its
owner now.
"""

import collections
import shutil
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path


def commits(wal: bytes) -> list[list[int]]:
    """The page numbers of each commit in the WAL's current generation."""
    _magic, _version, page_size, _seq, salt1, salt2, _c1, _c2 = struct.unpack(">8I", wal[:32])
    done, current, offset = [], [], 32
    while offset + 24 + page_size <= len(wal):
        page, commit_size, frame_salt1, frame_salt2, _, _ = struct.unpack(
            ">6I", wal[offset : offset + 24]
        )
        if (frame_salt1, frame_salt2) != (salt1, salt2):
            break  # a frame of an earlier generation: the current one ends here
        current.append(page)
        if commit_size:
            done.append(current)
            current = []
        offset += 24 + page_size
    return done


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    database = Path(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) == 3 else 15
    found = commits(Path(f"{database}-wal").read_bytes())
    if not found:
        sys.exit("the WAL holds no commit")
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "copy.db"
        shutil.copyfile(database, copy)
        owner = dict(sqlite3.connect(copy).execute("SELECT pageno, name FROM dbstat"))
    count = collections.Counter(owner.get(page, "(past the file's end)") for c in found for page in c)
    frames = sum(map(len, found))
    print(f"{len(found)} commits, {frames} frames, {frames / len(found):.1f} a commit")
    for name, n in count.most_common(top):
        print(f"{name:45s} {n / len(found):6.2f} a commit  {100 * n / frames:5.1f} %")


if __name__ == "__main__":
    main()
