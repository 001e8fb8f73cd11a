"""Model bundles (daemon/bundle.py): pack → verify → unpack of the shipped model, Ed25519 signatures, tampering,
truncation, path traversal and links in the tar, SIGKILL during unpack, and the `ripeye model` commands."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from daemon import bundle
from daemon.bundle import BundleError, pack, unpack_bundle, verify_bundle
from daemon.cli import main as cli
from daemon.model import load_bundle, size_variants

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "models" / "tomato-yolo11n"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path, skip=("bundle.json", "bundle.sig")) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).as_posix() not in skip}


def clone(src: Path, dst: Path, skip_sizes: bool = False) -> Path:
    """A copy of a model folder, hard-linked where the file system allows (tests that change a file replace it)."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns("sizes") if skip_sizes else None)
    return dst


def rewrite(path: Path, data: bytes) -> None:
    path.unlink()  # never write through a hard link into the shipped model
    path.write_bytes(data)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("bundle")


@pytest.fixture(scope="module")
def small(work) -> Path:
    """The shipped model folder without sizes/ (the full one is packed once, in the round-trip test)."""
    return clone(MODEL_DIR, work / "small", skip_sizes=True)


@pytest.fixture(scope="module")
def keys(work):
    good = bundle.keygen(work / "keys")
    other = bundle.keygen(work / "keys", "other")
    return {"key": good[0], "pub": good[1], "fp": good[2], "other_key": other[0], "other_pub": other[1]}


@pytest.fixture(scope="module")
def small_tar(work, small) -> Path:
    pack(small, work / "small.tar")
    return work / "small.tar"


@pytest.fixture(scope="module")
def signed_tar(work, small, keys) -> Path:
    pack(small, work / "signed.tar", sign_key=keys["key"])
    return work / "signed.tar"


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tf:
        return [(m, tf.extractfile(m).read() if m.isreg() else b"") for m in tf.getmembers()]


def write_tar(path: Path, items: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in items:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


# ------------------------------------------------------------------------------------------------ round trip

def test_full_model_round_trip(work, keys):
    """The shipped folder with every size: pack → verify → unpack gives the same files, and the daemon loads it."""
    out = work / "full.tar"
    info = pack(MODEL_DIR, out, sign_key=keys["key"])
    source = load_bundle(MODEL_DIR)
    assert (info.name, info.version, info.class_names) == ("tomato-yolo11n", source.version, source.class_names)
    assert info.input_sizes == sorted(size_variants(MODEL_DIR)) == [320, 416, 640]
    assert info.default_input_size == 640 and info.input_size == (640, 640)
    expected = tree(MODEL_DIR)
    assert {rel: e["sha256"] for rel, e in info.files.items()} == expected
    for name in ("metadata.json", "manifest.json", "README.md", "sizes/320/manifest.json", "sizes/416/model.onnx",
                 "openvino/int8/model.bin"):
        assert name in info.files
    with tarfile.open(out) as tf:
        names = tf.getnames()
    assert names[:2] == ["bundle.json", "bundle.sig"] and sorted(names[2:]) == sorted(expected)

    checked = verify_bundle(out, [keys["pub"]])
    assert checked.trusted and checked.signer == keys["fp"] and checked.archive_sha256 == sha(out)
    dest = unpack_bundle(out, work / "installed" / info.version, [keys["pub"]])
    assert dest == work / "installed" / info.version
    assert tree(dest) == expected
    assert json.loads((dest / "bundle.json").read_bytes()) == checked.manifest and (dest / "bundle.sig").is_file()
    loaded = load_bundle(dest)
    assert (loaded.version, loaded.class_names) == (source.version, source.class_names)
    assert [a.accepted for a in loaded.artifacts] == [a.accepted for a in source.artifacts]
    assert sorted(size_variants(dest)) == [320, 416, 640]
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".") and "partial" in p.name] == []


def test_small_round_trip_and_idempotent_unpack(tmp_path, small, small_tar):
    info = verify_bundle(small_tar)
    assert not info.signed and info.signer is None and info.input_sizes == [640]
    assert "sizes/320/model.onnx" not in info.files
    dest = unpack_bundle(small_tar, tmp_path / "models" / info.version)
    assert tree(dest) == tree(small)
    assert unpack_bundle(small_tar, dest) == dest  # same content: returned as it is
    assert sorted(p.name for p in dest.parent.iterdir()) == [f".{info.version}.lock", info.version]


def test_unpack_refuses_a_dest_with_other_content(tmp_path, small_tar):
    dest = unpack_bundle(small_tar, tmp_path / "m")
    rewrite(dest / "calibration.txt", b"changed\n")
    with pytest.raises(BundleError, match=r"exists with different content \(calibration.txt differs"):
        unpack_bundle(small_tar, dest)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    with pytest.raises(BundleError, match=r"exists with different content \(README.md is missing"):
        unpack_bundle(small_tar, tmp_path / "other")
    assert (tmp_path / "other" / "x").read_text() == "x"


@pytest.fixture(scope="module")
def small_tgz(work, small) -> Path:
    pack(small, work / "v.tgz", version="grower-2027.03_a")
    return work / "v.tgz"


def test_gzip_and_version_override(work, small, small_tgz):
    out = small_tgz
    info = verify_bundle(out)
    assert info.version == "grower-2027.03_a"
    with open(out, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    assert verify_bundle(out).version == "grower-2027.03_a"
    with pytest.raises(BundleError, match="version '../x'"):
        pack(small, work / "bad.tar", version="../x")
    assert not (work / "bad.tar").exists()


# -------------------------------------------------------------------------------------------------- signatures

def test_signature_right_key_other_key_and_unsigned(signed_tar, small_tar, keys):
    info = verify_bundle(signed_tar, [keys["pub"]])
    assert info.signed and info.trusted and info.signer == keys["fp"]
    raw = base64.b64decode(keys["pub"].read_text())
    assert verify_bundle(signed_tar, [raw]).trusted  # raw bytes, base64 text and files are all keys
    assert verify_bundle(signed_tar, [keys["pub"].read_text().strip()]).trusted
    untrusted = verify_bundle(signed_tar)  # no trusted keys: the signature is still checked, not trusted
    assert untrusted.signed and not untrusted.trusted
    with pytest.raises(BundleError, match=r"bundle.sig: signed by ed25519:[0-9a-f]{16}, which is not a trusted key"):
        verify_bundle(signed_tar, [keys["other_pub"]])
    with pytest.raises(BundleError, match="bundle.sig: missing: the bundle is unsigned and trusted keys are set"):
        verify_bundle(small_tar, [keys["pub"]])
    assert not verify_bundle(small_tar).signed


def test_pem_public_key_is_accepted(tmp_path, signed_tar, keys):
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(keys["key"].read_bytes(), None)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "k.pem").write_bytes(pem)
    assert verify_bundle(signed_tar, [tmp_path / "k.pem"]).trusted
    with pytest.raises(BundleError, match="not an Ed25519 public key"):
        verify_bundle(signed_tar, ["bm90IGEga2V5"])


def test_altered_bundle_json_breaks_the_signature(tmp_path, signed_tar, keys):
    items = members(signed_tar)
    body = json.loads(items[0][1])
    body["class_names"] = ["ripe"]
    data = bundle.canonical_json(body)
    items[0][0].size = len(data)
    bad = write_tar(tmp_path / "bad.tar", [(items[0][0], data)] + items[1:])
    with pytest.raises(BundleError, match="bundle.sig: the signature by .* does not match bundle.json"):
        verify_bundle(bad)
    with pytest.raises(BundleError, match="bundle.sig"):
        unpack_bundle(bad, tmp_path / "dest", [keys["pub"]])
    assert not (tmp_path / "dest").exists()


def test_unsigned_refused_on_unpack_with_trusted_keys(tmp_path, small_tar, keys):
    with pytest.raises(BundleError, match="unsigned"):
        unpack_bundle(small_tar, tmp_path / "dest", [keys["pub"]])
    assert not (tmp_path / "dest").exists()


# --------------------------------------------------------------------------------------- damage and tampering

def test_one_byte_changed_inside_the_tar_is_refused_naming_the_file(tmp_path, signed_tar, keys):
    with tarfile.open(signed_tar) as tf:
        offset = tf.getmember("openvino/fp32/model.bin").offset_data + 1000
    data = bytearray(signed_tar.read_bytes())
    data[offset] ^= 0x01
    bad = tmp_path / "tampered.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"^openvino/fp32/model.bin: SHA-256 [0-9a-f]{12}… does not match"):
        verify_bundle(bad, [keys["pub"]])
    with pytest.raises(BundleError, match="openvino/fp32/model.bin"):
        unpack_bundle(bad, tmp_path / "dest", [keys["pub"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tampered.tar"]  # nothing written, no lock either


@pytest.mark.parametrize("fraction", [0.5, 0.999])
def test_truncated_archive_is_refused(tmp_path, small_tar, fraction):
    data = small_tar.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(BundleError, match="truncated"):
        verify_bundle(cut)
    with pytest.raises(BundleError, match="truncated"):
        unpack_bundle(cut, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_truncated_gzip_is_refused(tmp_path, small_tgz):
    data = small_tgz.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(BundleError, match="truncated"):
        verify_bundle(tmp_path / "cut.tar.gz")


def test_missing_and_unlisted_files_are_refused(tmp_path, small_tar):
    items = members(small_tar)
    dropped = write_tar(tmp_path / "dropped.tar", [i for i in items if i[0].name != "ncnn/fp16/model.ncnn.bin"])
    with pytest.raises(BundleError, match="^ncnn/fp16/model.ncnn.bin: listed in bundle.json but missing"):
        verify_bundle(dropped)
    extra = tarfile.TarInfo("extra.txt")
    extra.size = 3
    with pytest.raises(BundleError, match="^extra.txt: in the archive but not listed"):
        verify_bundle(write_tar(tmp_path / "extra.tar", items + [(extra, b"abc")]))
    with pytest.raises(BundleError, match="^metadata.json: appears twice"):
        verify_bundle(write_tar(tmp_path / "dup.tar", items + [i for i in items if i[0].name == "metadata.json"]))
    with pytest.raises(BundleError, match="bundle.json: missing"):
        verify_bundle(write_tar(tmp_path / "nojson.tar", items[1:]))
    (tmp_path / "not-a-tar").write_bytes(b"hello" * 1000)
    with pytest.raises(BundleError, match="truncated or unreadable archive"):
        verify_bundle(tmp_path / "not-a-tar")


def _evil(name: str, kind: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    if kind == "file":
        info.size = 5
        return info, b"evil\n"
    info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
    info.linkname = "/etc/passwd" if kind == "symlink" else "metadata.json"
    return info, b""


@pytest.mark.parametrize("name,kind,message", [
    ("../evil", "file", "a path with '..'"),
    ("sizes/../../evil", "file", "a path with '..'"),
    ("/tmp/ripeye-evil-bundle", "file", "an absolute path"),
    ("evil-link", "symlink", "a symbolic link"),
    ("model.onnx", "symlink", "a symbolic link"),
    ("evil-hardlink", "hardlink", "a hard link"),
])
def test_traversal_and_links_in_the_tar_are_refused(tmp_path, small_tar, name, kind, message):
    items = members(small_tar)
    position = 1 if name != "model.onnx" else next(i for i, (m, _) in enumerate(items) if m.name == "model.onnx")
    items = [i for i in items if i[0].name != name or kind == "file"]
    items.insert(position, _evil(name, kind))
    (tmp_path / "bad").mkdir()
    bad = write_tar(tmp_path / "bad" / "evil.tar", items)
    with tarfile.open(bad) as tf:
        assert name in tf.getnames()  # the archive really holds it
    with pytest.raises(BundleError, match=f"^{name}: {message}"):
        verify_bundle(bad)
    with pytest.raises(BundleError, match=message):
        unpack_bundle(bad, tmp_path / "bad" / "sub" / "dest")
    assert not (tmp_path / "evil").exists() and not Path("/tmp/ripeye-evil-bundle").exists()
    assert not (tmp_path / "bad" / "sub").exists()  # refused before anything was written


# ------------------------------------------------------------------------------------------ SIGKILL mid-unpack

KILLED_UNPACK = r"""
import os, sys, time
from daemon import bundle
bundle_path, dest, stop = sys.argv[1], sys.argv[2], sys.argv[3]
real_write, real_rename, written = bundle._write_file, os.rename, []

def write(root, rel, chunks):
    real_write(root, rel, chunks)
    written.append(rel)
    if stop == "first-file" and len(written) == 1:
        print("PAUSED", rel, flush=True)
        time.sleep(600)

def rename(a, b):
    if stop == "before-rename":
        print("PAUSED", a, flush=True)
        time.sleep(600)
    real_rename(a, b)

bundle._write_file = write
os.rename = rename
bundle.unpack_bundle(bundle_path, dest)
print("DONE", flush=True)
"""


@pytest.mark.parametrize("stop", ["first-file", "before-rename"])
def test_sigkill_during_unpack_leaves_no_folder_and_the_next_unpack_succeeds(tmp_path, small, small_tar, stop):
    dest = tmp_path / "models" / "v1"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_UNPACK, str(small_tar), str(dest), stop],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PAUSED"), (line, proc.stderr.read() if proc.poll() is not None else "")
        leftovers = [p for p in dest.parent.iterdir() if p.name.startswith(".v1.partial-")]
        assert len(leftovers) == 1 and any(leftovers[0].rglob("*"))  # it was killed part-way, with files written
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not dest.exists()
    if stop == "before-rename":  # an unpack of another version cleans it up too (its lock died with the process)
        unpack_bundle(small_tar, dest.parent / "v2")
        assert sorted(p.name for p in dest.parent.iterdir()) == [".v1.lock", ".v2.lock", "v2"]
    assert unpack_bundle(small_tar, dest) == dest  # the lock died with the process; its leftovers are cleaned
    assert tree(dest) == tree(small)
    assert sorted(p.name for p in dest.parent.iterdir() if "v2" not in p.name) == [".v1.lock", "v1"]


def test_a_live_unpack_of_another_version_is_left_alone(tmp_path, small_tar):
    import fcntl

    (tmp_path / ".v3.partial-123-abcd").mkdir()
    fd = os.open(tmp_path / ".v3.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as an unpack in progress holds it
        unpack_bundle(small_tar, tmp_path / "v1")
        assert (tmp_path / ".v3.partial-123-abcd").is_dir()
    finally:
        os.close(fd)
    unpack_bundle(small_tar, tmp_path / "v1")
    assert not (tmp_path / ".v3.partial-123-abcd").exists()


FILE_SIZE_LIMIT = r"""
import resource, signal, sys
from daemon import bundle
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    bundle.unpack_bundle(sys.argv[1], sys.argv[2])
except bundle.BundleError as exc:
    print(exc)
"""


def test_a_failed_write_is_one_clear_error_and_leaves_nothing(tmp_path, small_tar):
    """A file-size limit stands in for a full disk: the write fails part-way through a large artifact."""
    dest = tmp_path / "models" / "v1"
    proc = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(small_tar), str(dest)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cannot write" in proc.stdout and "File too large" in proc.stdout, proc.stdout
    name = proc.stdout.split(":")[0]
    assert name in verify_bundle(small_tar).files and verify_bundle(small_tar).files[name]["size"] > 1 << 20
    assert sorted(p.name for p in dest.parent.iterdir()) == [".v1.lock"]


# ---------------------------------------------------------------------------------------------- pack refusals

def test_pack_refuses_an_artifact_that_does_not_match_its_manifest_hash(tmp_path, small):
    folder = clone(small, tmp_path / "m")
    xml = folder / "openvino" / "int8" / "model.xml"
    rewrite(xml, xml.read_bytes().replace(b"<net", b"<net ", 1))
    with pytest.raises(BundleError, match=r"openvino/int8/model.xml: SHA-256 .* does not match manifest.json "
                                          r"artifacts\[1\]"):
        pack(folder, tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tar")] == []


def test_pack_refuses_a_source_that_does_not_match_metadata(tmp_path, small):
    folder = clone(small, tmp_path / "m")
    rewrite(folder / "model.pt", b"not the trained weights")
    with pytest.raises(BundleError, match=r"m/model.pt: SHA-256 .* does not match metadata.json sources"):
        pack(folder, tmp_path / "out.tar")


def test_pack_refuses_what_load_bundle_cannot_read(tmp_path, small):
    folder = clone(small, tmp_path / "m")
    meta = json.loads((folder / "metadata.json").read_text())
    meta["input_size"] = [640]
    rewrite(folder / "metadata.json", json.dumps(meta).encode())
    with pytest.raises(BundleError, match=r"not a usable model folder .*metadata.json: input_size"):
        pack(folder, tmp_path / "out.tar")
    rewrite(folder / "metadata.json", (small / "metadata.json").read_bytes())
    rewrite(folder / "manifest.json", b"{broken")
    with pytest.raises(BundleError, match="manifest.json: unreadable"):
        pack(folder, tmp_path / "out.tar")
    with pytest.raises(BundleError, match="not a folder"):
        pack(tmp_path / "nothing", tmp_path / "out.tar")


def test_pack_refuses_missing_artifacts_links_and_writing_inside(tmp_path, small):
    folder = clone(small, tmp_path / "m")
    (folder / "ncnn" / "fp16" / "model.ncnn.bin").unlink()
    with pytest.raises(BundleError, match=r"ncnn/fp16/model.ncnn.bin: missing \(listed in manifest.json"):
        pack(folder, tmp_path / "out.tar")
    folder = clone(small, tmp_path / "m2")
    (folder / "link").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="m2/link: a symbolic link"):
        pack(folder, tmp_path / "out.tar")
    (folder / "link").unlink()
    with pytest.raises(BundleError, match="inside the folder being packed"):
        pack(folder, folder / "out.tar")


def test_pack_refuses_a_size_variant_with_a_bad_artifact(tmp_path):
    folder = tmp_path / "m"
    clone(MODEL_DIR, folder)
    target = folder / "sizes" / "416" / "onnxruntime" / "int8" / "model.onnx"
    rewrite(target, target.read_bytes()[:-10])
    with pytest.raises(BundleError, match="sizes/416/onnxruntime/int8/model.onnx: SHA-256"):
        pack(folder, tmp_path / "out.tar")


# --------------------------------------------------------------------------------------------------------- CLI

def test_cli_keygen(tmp_path, capsys):
    assert cli(["model", "keygen", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    key, pub = tmp_path / "k" / "ripeye-model.key", tmp_path / "k" / "ripeye-model.pub"
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert len(base64.b64decode(pub.read_text().strip())) == 32
    assert pub.read_text().strip() in out and "ed25519:" in out
    assert cli(["model", "keygen", "--out", str(tmp_path / "k")]) == 2
    assert "exists; not overwriting" in capsys.readouterr().err
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_cli_pack_and_verify(tmp_path, small, small_tar, keys, capsys):
    out = tmp_path / "b.tar"
    assert cli(["model", "pack", str(small), "--out", str(out), "--sign", str(keys["key"])]) == 0
    printed = capsys.readouterr().out
    version = sha(small / "model.onnx")[:12]  # a model's version is its ONNX source's hash
    assert f"version:   {version}" in printed and f"signed by {keys['fp']}" in printed

    assert cli(["model", "verify", str(out), "--trusted-key", str(keys["pub"])]) == 0
    printed = capsys.readouterr().out
    for text in ("OK", "name:      tomato-yolo11n", f"version:   {version}", "classes:   ripe, half_ripe, unripe",
                 "sizes:     640", f"signed by {keys['fp']} (a trusted key)", f"sha256:    {sha(out)}"):
        assert text in printed

    assert cli(["model", "verify", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["version"] == version and data["signer"] == keys["fp"] and not data["trusted"]

    assert cli(["model", "verify", str(out), "--trusted-key", str(keys["other_pub"])]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ripeye model verify: {out}: REFUSED: bundle.sig: signed by") and "\n" not in err
    assert cli(["model", "verify", str(small_tar), "--trusted-key", str(keys["pub"])]) == 1
    assert "bundle.sig: missing" in capsys.readouterr().err
    assert cli(["model", "verify", str(out), "--trusted-key", "garbage"]) == 2
    assert "--trusted-key garbage: not an Ed25519 public key" in capsys.readouterr().err
    assert cli(["model", "verify", str(tmp_path / "absent.tar")]) == 1
    assert "absent.tar: cannot read" in capsys.readouterr().err

    folder = clone(small, tmp_path / "m")
    rewrite(folder / "onnxruntime" / "int8" / "model.onnx", b"x")
    assert cli(["model", "pack", str(folder), "--out", str(tmp_path / "c.tar")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ripeye model pack: ") and "onnxruntime/int8/model.onnx: SHA-256" in err


def test_cli_entry_point_verify_of_a_tampered_bundle(tmp_path, small_tar):
    with tarfile.open(small_tar) as tf:
        offset = tf.getmember("model.onnx").offset_data + 5
    data = bytearray(small_tar.read_bytes())
    data[offset] ^= 0xFF
    (tmp_path / "t.tar").write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "daemon", "model", "verify", str(tmp_path / "t.tar")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"ripeye model verify: {tmp_path / 't.tar'}: REFUSED: model.onnx: SHA-256")
