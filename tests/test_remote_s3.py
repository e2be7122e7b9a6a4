"""s3:// teachers through fsspec and s3fs, against moto's S3 server on 127.0.0.1.

Credentials and the endpoint come from the usual AWS environment variables
(``AWS_ENDPOINT_URL`` and test keys), as a user's would.
"""
from __future__ import annotations

import json
import logging

import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

import slicer  # noqa: E402
from slicer import SlicerError, cli  # noqa: E402
from remote_fixtures import tree  # noqa: E402

BUCKET = "models"


@pytest.fixture(scope="module")
def s3(remote_root):
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()  # no S3FileSystem made before the endpoint was set
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket=BUCKET)
    for p in remote_root["teacher"].iterdir():
        client.upload_file(str(p), BUCKET, f"llama/{p.name}")
    yield {"client": client, "url": f"s3://{BUCKET}/llama/"}
    mp.undo()
    server.stop()


def test_s3_student_is_byte_identical_to_the_local_run(remote_root, s3, tmp_path):
    out = tmp_path / "out"
    summary = slicer.shrink(s3["url"], out, template=remote_root["template"], max_shard_size="300KB")
    assert tree(out) == remote_root["local_tree"]
    teacher = json.loads((out / "slicer_manifest.json").read_text())["teacher"]
    assert teacher["source"] == "s3" and teacher["path"] == f"s3://{BUCKET}/llama"
    etags = {o["Key"].split("/")[-1]: o["ETag"] for o in s3["client"].list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert {f["name"]: f["etag"] for f in teacher["files"]} == {n: etags[n] for n in etags if n.endswith(".safetensors")}
    assert summary.bytes_fetched < 0.6 * summary.teacher_bytes  # half the layers never fetched


def test_s3_missing_prefix_is_one_line(remote_root, s3, tmp_path, capfd):
    code = cli.main(["shrink", f"s3://{BUCKET}/nothing/", str(tmp_path / "out"), "--template",
                     str(remote_root["template"]), "--quiet"])
    err = capfd.readouterr().err
    assert code == 2 and err.startswith(f"slicer: error: s3://{BUCKET}/nothing: not found") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_s3_object_replaced_during_the_run_is_refused(remote_root, s3, tmp_path, monkeypatch):
    from slicer.remote import fsspec_source

    name = "model-00002-of-00003.safetensors"
    real = fsspec_source.FsspecSource.read
    replaced = []

    def read_then_replace(self, file, start, end, write):
        if not replaced and file.name == name and start > 0:
            body = (remote_root["teacher"] / name).read_bytes()
            s3["client"].put_object(Bucket=BUCKET, Key=f"llama/{name}", Body=body[:-1] + bytes([body[-1] ^ 1]))
            replaced.append(True)
        return real(self, file, start, end, write)

    monkeypatch.setattr(fsspec_source.FsspecSource, "read", read_then_replace)
    try:
        with pytest.raises(SlicerError, match=f"{name}: the remote file changed"):
            slicer.shrink(s3["url"], tmp_path / "out", template=remote_root["template"], remote={"backoff_s": 0.01})
    finally:
        s3["client"].upload_file(str(remote_root["teacher"] / name), BUCKET, f"llama/{name}")
    assert replaced and not (tmp_path / "out").exists()
