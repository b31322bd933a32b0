"""Resumable, verified download of the Amazon 5-core files, against a local HTTP server."""
from __future__ import annotations

import gzip
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from idea.data import download as dl
from idea.data.interactions import DataFormatError

FILE = dl.AMAZON_SOURCES["beauty"].file_name
COUNTS = (7, 6, 42)  # users, items, interactions of the generated file


def make_reviews() -> bytes:
    """A 7-user x 6-item complete block (a 5-core by itself), ~28 KB uncompressed-in-gzip."""
    lines = [
        json.dumps({"reviewerID": f"U{u}", "asin": f"B{i:09d}", "unixReviewTime": 1_300_000_000 + 86400 * (u + i),
                    "reviewText": "lorem ipsum " * (40 + u * i)})
        for u in range(7) for i in range(6)
    ]
    return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=0)


class Server:
    """ThreadingHTTPServer on 127.0.0.1 serving one file, with switchable Range support."""

    def __init__(self, content: bytes):
        self.content = content
        self.support_range = True
        self.cut_after: int | None = None  # send this many body bytes, then drop the connection
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if self.path != "/" + FILE:
                    self.send_error(404)
                    return
                body, total = server.content, len(server.content)
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if server.support_range and m:
                    start = int(m.group(1))
                    if start >= total:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{total}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                    body = body[start:]
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[: server.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def content():
    return make_reviews()


@pytest.fixture
def server(content):
    srv = Server(content)
    yield srv
    srv.close()


def dest_of(tmp_path):
    return tmp_path / "beauty" / FILE


def test_sources_table():
    """The three categories point at McAuley's files and carry the published 5-core counts."""
    assert set(dl.AMAZON_SOURCES) == {"beauty", "sports", "toys"}
    assert dl.AMAZON_SOURCES["beauty"].counts == (22363, 12101, 198502)
    assert dl.AMAZON_SOURCES["sports"].counts == (35598, 18357, 296337)
    assert dl.AMAZON_SOURCES["toys"].counts == (19412, 11924, 167597)
    assert dl.AMAZON_SOURCES["sports"].url == (
        "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Sports_and_Outdoors_5.json.gz"
    )
    assert dl.AMAZON_SOURCES["toys"].file_name == "reviews_Toys_and_Games_5.json.gz"


def test_fresh_download(tmp_path, server, content, capsys):
    """A fresh download lands under <data_dir>/<name>/, byte-exact, with no .part left, counts checked."""
    path = dl.download("beauty", tmp_path, base_url=server.url, progress=True, expected_counts=COUNTS)
    assert path == dest_of(tmp_path)
    assert path.read_bytes() == content
    assert not path.with_name(FILE + ".part").exists()
    assert server.requests == [("/" + FILE, None)]
    assert "B" in capsys.readouterr().err  # the tqdm bar reports bytes on stderr


def test_fresh_download_with_patched_known_counts(tmp_path, server, monkeypatch, content):
    """expected_counts=True checks the table's counts (patched here to the generated file's)."""
    src = dl.AMAZON_SOURCES["beauty"]
    monkeypatch.setitem(dl.AMAZON_SOURCES, "beauty", dl.AmazonSource(src.name, src.file_name, *COUNTS))
    path = dl.download("beauty", tmp_path, base_url=server.url, progress=False)
    assert path.read_bytes() == content


def test_resume_from_partial(tmp_path, server, content):
    """An existing .part is resumed with a Range request and the result equals the source."""
    part = dest_of(tmp_path).with_name(FILE + ".part")
    part.parent.mkdir(parents=True)
    half = len(content) // 2
    part.write_bytes(content[:half])
    path = dl.download("beauty", tmp_path, base_url=server.url, progress=False, expected_counts=COUNTS)
    assert server.requests == [("/" + FILE, f"bytes={half}-")]
    assert path.read_bytes() == content
    assert not part.exists()


def test_server_without_range_support_restarts(tmp_path, server, content, capsys):
    """A 200 answer to a Range request discards the partial and writes the whole body once."""
    server.support_range = False
    part = dest_of(tmp_path).with_name(FILE + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(content[:100])
    path = dl.download("beauty", tmp_path, base_url=server.url, progress=False, expected_counts=COUNTS)
    assert server.requests == [("/" + FILE, "bytes=100-")]
    assert path.read_bytes() == content  # not content[:100] + content
    assert "does not support resuming" in capsys.readouterr().out


def test_416_discards_partial_and_restarts(tmp_path, server, content):
    """A 416 (partial already as long as the file, or junk) restarts the download from zero."""
    part = dest_of(tmp_path).with_name(FILE + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * (len(content) + 10))
    path = dl.download("beauty", tmp_path, base_url=server.url, progress=False, expected_counts=COUNTS)
    assert server.requests == [("/" + FILE, f"bytes={len(content) + 10}-"), ("/" + FILE, None)]
    assert path.read_bytes() == content


def test_interrupted_download_keeps_part_and_rerun_resumes(tmp_path, server, content):
    """A dropped connection raises an error naming the URL and resume; the re-run finishes the file."""
    server.cut_after = 1000
    with pytest.raises(dl.DownloadError) as info:
        dl.download("beauty", tmp_path, base_url=server.url, progress=False, expected_counts=COUNTS)
    msg = str(info.value)
    part = dest_of(tmp_path).with_name(FILE + ".part")
    assert server.url + FILE in msg and f"re-run to resume (the 1000 bytes received are kept in {part})" in msg
    assert part.read_bytes() == content[:1000]
    assert not dest_of(tmp_path).exists()

    server.cut_after = None
    path = dl.download("beauty", tmp_path, base_url=server.url, progress=False, expected_counts=COUNTS)
    assert server.requests[-1] == ("/" + FILE, "bytes=1000-")
    assert path.read_bytes() == content


def test_existing_file_not_downloaded_again(tmp_path, server, content, capsys):
    """A complete file already in place is verified but not fetched."""
    dest = dest_of(tmp_path)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(content)
    assert dl.download("beauty", tmp_path, base_url=server.url, progress=False, expected_counts=COUNTS) == dest
    assert server.requests == []
    assert "already there" in capsys.readouterr().out


def test_count_mismatch_raises_and_keeps_file(tmp_path, server, content):
    """With the real Beauty counts the small file mismatches: the error gives expected/got and the path."""
    with pytest.raises(DataFormatError) as info:
        dl.download("beauty", tmp_path, base_url=server.url, progress=False)
    msg = str(info.value)
    assert "expected (22363, 12101, 198502)" in msg and f"got {COUNTS}" in msg
    assert "corrupt" in msg and str(dest_of(tmp_path)) in msg
    assert dest_of(tmp_path).read_bytes() == content


def test_corrupt_download_reported_with_path(tmp_path, server):
    """A body that is not a valid review file fails verification, names the file and keeps it."""
    server.content = gzip.compress(b"<html>not the dataset</html>\n")
    with pytest.raises(DataFormatError) as info:
        dl.download("beauty", tmp_path, base_url=server.url, progress=False)
    msg = str(info.value)
    assert "line 1" in msg and "invalid JSON" in msg and "kept at" in msg
    assert dest_of(tmp_path).exists()


def test_http_error_names_url(tmp_path, server):
    """A 404 raises DownloadError naming the URL and the status."""
    with pytest.raises(dl.DownloadError, match=r"404") as info:
        dl.download("beauty", tmp_path, base_url=server.url + "missing/", progress=False)
    assert server.url + "missing/" + FILE in str(info.value)


def test_unreachable_host_names_url_and_names_no_partial_file(tmp_path):
    """A refused connection raises DownloadError naming the URL; nothing was received, so the message names
    no partial file (none exists) and says a re-run tries again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the request: nothing listens here
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(dl.DownloadError) as info:
        dl.download("beauty", tmp_path, base_url=url, progress=False, timeout=5)
    msg = str(info.value)
    assert url + FILE in msg and "re-run to try again (nothing was received)" in msg
    assert ".part" not in msg and not list(tmp_path.rglob("*.part"))


def test_unknown_name_lists_choices(tmp_path):
    """An unknown dataset name is a ValueError listing what can be downloaded."""
    with pytest.raises(ValueError, match="beauty, sports, toys"):
        dl.download("yelp", tmp_path)


def test_cli_download_then_load_through_the_registry(tmp_path, server, monkeypatch, capsys):
    """`python -m idea.data download beauty` lands the file where `load_dataset('beauty')` finds it."""
    from idea.data import load_dataset
    from idea.data.__main__ import main

    src = dl.AMAZON_SOURCES["beauty"]
    monkeypatch.setitem(dl.AMAZON_SOURCES, "beauty", dl.AmazonSource(src.name, src.file_name, *COUNTS))
    assert main(["download", "beauty", "--data-dir", str(tmp_path), "--base-url", server.url]) == 0
    assert f"beauty: ready at {dest_of(tmp_path)}" in capsys.readouterr().out
    data = load_dataset("beauty", tmp_path)
    assert (data.n_users, data.n_items, data.n_interactions) == COUNTS
    assert data.has_time


def test_cli_download_failure_exits_2_naming_the_url(tmp_path, capsys):
    from idea.data.__main__ import main

    assert main(["download", "beauty", "--data-dir", str(tmp_path), "--base-url", "http://127.0.0.1:9/"]) == 2
    err = capsys.readouterr().err
    assert "error: downloading http://127.0.0.1:9/reviews_Beauty_5.json.gz failed" in err
