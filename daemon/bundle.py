"""Model bundles: one archive of a model folder, with the SHA-256 of every file and an optional Ed25519 signature.

Format (format_version 1)
-------------------------
A POSIX tar archive, plain or gzip-compressed (``ripeye model pack`` gzips when --out ends in .gz or .tgz; readers
detect it). Its members, in this order:

1. ``bundle.json`` -- the bundle manifest, canonical JSON (UTF-8, sorted keys, no whitespace)::

     {"format": "ripeye-model-bundle", "format_version": 1, "name": ..., "version": ...,
      "class_names": [...], "input_size": [h, w], "input_sizes": [320, 640, ...], "default_input_size": 640|null,
      "source_onnx_sha256": ..., "created_at": "2026-12-04T18:18:36Z",
      "files": {"metadata.json": {"size": 2741, "sha256": "<64 hex>"}, "sizes/320/model.onnx": {...}, ...}}

   ``version`` defaults to the model's own version as ``daemon.model.load_bundle`` reports it (the first 12 hex of
   the source ONNX's SHA-256); ``--version`` overrides it ([A-Za-z0-9][A-Za-z0-9._-]{0,63}: it names a folder on the
   device). ``files`` lists every other member except bundle.sig.
2. ``bundle.sig`` (only when signed) -- JSON ``{"algorithm": "ed25519", "public_key": "<base64 of the 32 raw
   bytes>", "signature": "<base64 of 64 bytes>"}``. The signature is over ``SIGNED_PREFIX + <the exact bytes of
   bundle.json as stored>``; as bundle.json holds the SHA-256 of every file, it covers the whole model. The signature
   lives inside the archive, so a bundle is always one file.
3. every file of the model folder (metadata.json, manifest.json with the accuracy-gate verdicts, model.onnx, every
   artifact, calibration list, README.md model card, sizes/<N>/...), as regular-file members with relative POSIX
   paths, sorted. No directory entries, links or other member types.

A reader refuses (``BundleError``, whose message names the file): a member that is not a regular file (symlink,
hard link, device, directory), an absolute path or one with ``..``, duplicates, a member not listed in bundle.json,
a listed file missing, a size or SHA-256 that differs, a truncated or unreadable archive, a bad signature, and --
when trusted keys are given -- an unsigned bundle or one signed by a key not among them.

Keys
----
``ripeye model keygen --out DIR`` writes ``DIR/ripeye-model.key`` (the Ed25519 private key, unencrypted PKCS#8 PEM,
mode 0600: keep it off the devices) and ``DIR/ripeye-model.pub``: the public key as one line of base64 of its 32 raw
bytes -- the form a device's config lists as a trusted key. Anywhere a public key is read (``--trusted-key``,
``trusted_keys``), a base64 string, a file holding one, or a file holding a PEM public key are all accepted. A key's
fingerprint is ``ed25519:`` + the first 16 hex of the SHA-256 of its raw bytes.

Device side
-----------
``verify_bundle(path, trusted_keys)`` reads the archive once, front to back (signature first, then every file), and
returns a ``BundleInfo``. ``unpack_bundle(path, dest, trusted_keys)`` verifies, then extracts into a hidden sibling
``.<dest name>.partial-<pid>-<random>``, re-reads and hashes every file written, fsyncs files and folders and renames
the sibling to ``dest`` in one step: after a SIGKILL at any point there is either no ``dest`` or the complete one.
bundle.json and bundle.sig are kept in ``dest`` (provenance). Unpacks of one ``dest`` are serialised by an flock on
``.<dest name>.lock`` beside it (the empty lock file stays); each unpack removes the partial siblings that killed
unpacks left behind (its own dest's, and any other's whose lock is free). An existing ``dest`` with the same model
files is returned as it is; one with other content is refused. A failed write (full disk) is one BundleError naming
the file, and leaves no partial folder.

What pack checks: the folder and each sizes/<N>/ variant must load with ``daemon.model.load_bundle`` without
problems (readable metadata.json and manifest.json), every file a manifest artifact lists must exist, and the files
whose SHA-256 is recorded (metadata.json ``sources``, manifest.json ``source_onnx`` and each artifact's first file)
must match it; the variants' class_names must be the folder's. Links and special files in the folder are refused.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import sys
import tarfile
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Optional, Union

FORMAT = "ripeye-model-bundle"
FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
BUNDLE_SIG = "bundle.sig"
SIGNED_PREFIX = b"ripeye-model-bundle-v1\x00"
KEY_NAME = "ripeye-model"
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_BUNDLE_JSON = 4 << 20
MAX_SIG = 4096
MAX_FILES = 20000
CHUNK = 1 << 20


class BundleError(ValueError):
    """A bundle (or a folder to pack) that cannot be used; the message names the file."""


@dataclass
class BundleInfo:
    path: Path
    name: str
    version: str
    class_names: list[str]
    input_size: tuple[int, int]
    input_sizes: list[int]
    default_input_size: Optional[int]
    created_at: str
    files: dict[str, dict]  # relative path -> {"size": int, "sha256": hex}
    archive_sha256: str = ""  # of the bundle file as a whole (what an install request names)
    signed: bool = False
    signer: Optional[str] = None  # fingerprint of the signing key
    trusted: bool = False  # signed by one of the trusted keys given
    manifest: dict = field(default_factory=dict)  # bundle.json as read
    raw_manifest: bytes = field(default=b"", repr=False)  # its exact bytes (what the signature covers)
    raw_signature: Optional[bytes] = field(default=None, repr=False)  # bundle.sig's bytes when signed

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for f in self.files.values())

    def to_json(self) -> dict:
        return {"path": str(self.path), "name": self.name, "version": self.version, "class_names": self.class_names,
                "input_size": list(self.input_size), "input_sizes": self.input_sizes,
                "default_input_size": self.default_input_size, "created_at": self.created_at,
                "files": len(self.files), "bytes": self.total_bytes, "archive_sha256": self.archive_sha256,
                "signed": self.signed, "signer": self.signer, "trusted": self.trusted}


# ---------------------------------------------------------------------------------------------------------- keys

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def fingerprint(raw_public_key: bytes) -> str:
    return "ed25519:" + hashlib.sha256(raw_public_key).hexdigest()[:16]


def _raw_public(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def parse_public_key(value: Union[str, bytes, os.PathLike]) -> bytes:
    """The 32 raw bytes of an Ed25519 public key given as base64 text, PEM text, raw bytes or a file holding base64
    or PEM. ValueError naming what was given when it is none of these."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(value, Ed25519PublicKey):
        return _raw_public(value)
    if isinstance(value, bytes) and len(value) == 32:
        return value
    label = str(value)[:80]
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    if not text.strip().startswith("-----BEGIN") and len(text) < 4096 and "\n" not in text.strip():
        candidate = Path(text).expanduser()
        try:
            if candidate.is_file():
                label = str(candidate)
                text = candidate.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{candidate}: cannot read the public key ({exc})") from exc
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise ValueError(f"{label}: not a PEM public key ({exc})") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{label}: not an Ed25519 public key ({type(key).__name__})")
        return _raw_public(key)
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{label}: not an Ed25519 public key (expected base64 of 32 bytes, a file holding it, or "
                         "a PEM public key)")
    return raw


def trusted_key_set(trusted_keys: Optional[Iterable]) -> dict[str, bytes]:
    """fingerprint -> raw key for each trusted key given (see parse_public_key)."""
    out: dict[str, bytes] = {}
    for value in trusted_keys or ():
        raw = parse_public_key(value)
        out[fingerprint(raw)] = raw
    return out


def load_private_key(path: Union[str, os.PathLike]):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path).expanduser()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"{path}: cannot read the signing key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path}: not an Ed25519 private key ({type(key).__name__})")
    return key


def keygen(out_dir: Union[str, os.PathLike], name: str = KEY_NAME) -> tuple[Path, Path, str]:
    """Write <out_dir>/<name>.key (PKCS#8 PEM, 0600) and <name>.pub (base64 of the raw public key). Refuses to
    overwrite. Returns (private path, public path, fingerprint)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (private_path, public_path):
        if p.exists():
            raise BundleError(f"{p}: exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = _raw_public(key.public_key())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(private_path, 0o600)  # whatever the umask
    with open(public_path, "x") as f:
        f.write(_b64(raw) + "\n")
    return private_path, public_path, fingerprint(raw)


# ------------------------------------------------------------------------------------------------------- packing

def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def canonical_json(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _member_name_problem(name: str) -> Optional[str]:
    if not name or "\x00" in name or "\\" in name:
        return "an invalid path"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "a path with '..'"
    if any(p in ("", ".") for p in parts):
        return "a non-normal path"
    return None


def _folder_files(folder: Path) -> list[str]:
    """Every regular file under folder as sorted relative POSIX paths; a link or special file is refused."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for d in dirnames:
            if (here / d).is_symlink():
                raise BundleError(f"{here / d}: a symbolic link; a bundle holds regular files only")
        for n in filenames:
            p = here / n
            if p.is_symlink() or not p.is_file():
                raise BundleError(f"{p}: {'a symbolic link' if p.is_symlink() else 'not a regular file'}; "
                                  "a bundle holds regular files only")
            rel = p.relative_to(folder).as_posix()
            problem = _member_name_problem(rel)
            if problem:
                raise BundleError(f"{p}: {problem}")
            found.append(rel)
    return sorted(found)


def check_folder(folder: Union[str, os.PathLike], hashes: Optional[dict[str, str]] = None) -> list:
    """The model folder and each sizes/<N>/ variant as load_bundle reads them; BundleError naming the file when one
    cannot be read, has unreadable side files, or an artifact (or source) does not match its recorded SHA-256.
    `hashes` (relative path -> sha256) avoids hashing a file twice."""
    from daemon.model import MANIFEST, METADATA, load_bundle, size_variants

    folder = Path(folder)
    hashes = hashes if hashes is not None else {}

    def digest(path: Path) -> str:
        rel = path.resolve().relative_to(folder.resolve()).as_posix()
        if rel not in hashes:
            hashes[rel] = _sha256_file(path)[0]
        return hashes[rel]

    roots = [folder] + [p for n, p in size_variants(folder).items() if p != folder]
    bundles = []
    for root in roots:
        try:
            mb = load_bundle(root)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{root}: not a usable model folder ({exc})") from exc
        if mb.problems:
            raise BundleError(mb.problems[0])
        if not (root / METADATA).is_file():
            raise BundleError(f"{root / METADATA}: missing (a bundle needs the model's metadata)")
        manifest = json.loads((root / MANIFEST).read_text()) if (root / MANIFEST).is_file() else {}
        expected: list[tuple[str, str, str]] = []  # (relative file, sha256, recorded where)
        for name, sha in (mb.metadata.get("sources") or {}).items():
            expected.append((name, sha, f"{METADATA} sources"))
        src = manifest.get("source_onnx") if isinstance(manifest.get("source_onnx"), dict) else {}
        if isinstance(src.get("file"), str) and isinstance(src.get("sha256"), str):
            expected.append((src["file"], src["sha256"], f"{MANIFEST} source_onnx"))
        for i, entry in enumerate(manifest.get("artifacts") or []):
            files = entry.get("files") or []
            for j, rel in enumerate(files):
                if not isinstance(rel, str) or _member_name_problem(rel):
                    raise BundleError(f"{root / MANIFEST}: artifacts[{i}] names {rel!r}, not a path inside the folder")
                if not (root / rel).is_file():
                    raise BundleError(f"{root / rel}: missing (listed in {MANIFEST} artifacts[{i}])")
                if j == 0 and entry.get("sha256"):
                    expected.append((rel, entry["sha256"], f"{MANIFEST} artifacts[{i}]"))
        for rel, sha, where in expected:
            path = root / rel
            if not path.is_file():
                raise BundleError(f"{path}: missing (recorded in {where})")
            actual = digest(path)
            if actual != sha:
                raise BundleError(f"{path}: SHA-256 {actual[:12]}… does not match {where} ({str(sha)[:12]}…); "
                                  "the file changed after the model was built or optimized")
        bundles.append(mb)
    top = bundles[0]
    for mb in bundles[1:]:
        if mb.class_names != top.class_names:
            raise BundleError(f"{mb.root / METADATA}: class_names {mb.class_names} differ from {top.class_names} in "
                              f"{folder / METADATA}")
    return bundles


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def pack(folder: Union[str, os.PathLike], out: Union[str, os.PathLike], sign_key: Optional[Union[str, os.PathLike]]
         = None, version: Optional[str] = None, compress: Optional[bool] = None) -> BundleInfo:
    """Pack a model folder into one bundle file (written beside `out` and renamed into place). compress: gzip;
    None: when `out` ends in .gz or .tgz."""
    from daemon.model import size_variants

    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a folder")
    if out.resolve().is_relative_to(folder.resolve()):
        raise BundleError(f"{out}: inside the folder being packed; write the bundle elsewhere")
    key = load_private_key(sign_key) if sign_key else None
    files = _folder_files(folder)
    for reserved in (BUNDLE_JSON, BUNDLE_SIG):
        if reserved in files:
            raise BundleError(f"{folder / reserved}: a model folder may not hold {reserved} (the bundle's own)")
    if len(files) > MAX_FILES:
        raise BundleError(f"{folder}: {len(files)} files, more than a bundle holds ({MAX_FILES})")
    hashes: dict[str, str] = {}
    top = check_folder(folder, hashes)[0]
    listing = {}
    for rel in files:
        sha, size = _sha256_file(folder / rel)
        if rel in hashes and hashes[rel] != sha:
            raise BundleError(f"{folder / rel}: changed while being packed")
        listing[rel] = {"size": size, "sha256": sha}
    version = version or top.version
    if not VERSION_RE.match(version or ""):
        raise BundleError(f"version {version!r}: use 1-64 of A-Z a-z 0-9 . _ - (it names a folder on the device)")
    now = time.time()
    from daemon.model import default_size

    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": top.name, "version": version,
        "class_names": top.class_names, "input_size": list(top.input_size),
        "input_sizes": sorted(size_variants(folder)), "default_input_size": default_size(folder),
        "source_onnx_sha256": listing.get("model.onnx", {}).get("sha256", ""),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "files": listing,
    }
    body = canonical_json(manifest)
    sig = None
    if key is not None:
        sig = canonical_json({"algorithm": "ed25519", "public_key": _b64(_raw_public(key.public_key())),
                              "signature": _b64(key.sign(SIGNED_PREFIX + body))})
    if compress is None:
        compress = out.name.endswith((".gz", ".tgz"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    mtime = int(now)
    try:
        with open(tmp, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz" if compress else "w",
                                                   format=tarfile.PAX_FORMAT, **({"compresslevel": 6} if compress
                                                                                 else {})) as tf:
            tf.addfile(_tarinfo(BUNDLE_JSON, len(body), mtime), io.BytesIO(body))
            if sig is not None:
                tf.addfile(_tarinfo(BUNDLE_SIG, len(sig), mtime), io.BytesIO(sig))
            for rel in files:
                h = hashlib.sha256()
                with open(folder / rel, "rb") as f:
                    tf.addfile(_tarinfo(rel, listing[rel]["size"], mtime), _HashingReader(f, h))
                if h.hexdigest() != listing[rel]["sha256"]:
                    raise BundleError(f"{folder / rel}: changed while being packed")
            tf.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return verify_bundle(out)  # what a device will read: check it once before handing it over


# ---------------------------------------------------------------------------------------------------- verifying

class _HashingReader:
    """A file object that hashes what is read through it."""

    def __init__(self, f: BinaryIO, h):
        self.f, self.h = f, h

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


def _check_signature(sig_bytes: Optional[bytes], body: bytes,
                     trusted: dict[str, bytes]) -> tuple[bool, Optional[str], bool]:
    """(signed, signer fingerprint, trusted); BundleError on a bad signature or, with trusted keys, none or an
    untrusted one."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if sig_bytes is None:
        if trusted:
            raise BundleError(f"{BUNDLE_SIG}: missing: the bundle is unsigned and trusted keys are set "
                              f"({', '.join(trusted)})")
        return False, None, False
    try:
        sig = json.loads(sig_bytes)
        if sig.get("algorithm") != "ed25519":
            raise ValueError(f"algorithm {sig.get('algorithm')!r}, not ed25519")
        raw = base64.b64decode(sig["public_key"], validate=True)
        signature = base64.b64decode(sig["signature"], validate=True)
        if len(raw) != 32 or len(signature) != 64:
            raise ValueError("wrong key or signature length")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"{BUNDLE_SIG}: unreadable ({exc})") from exc
    fp = fingerprint(raw)
    if trusted and fp not in trusted:
        raise BundleError(f"{BUNDLE_SIG}: signed by {fp}, which is not a trusted key ({', '.join(trusted)})")
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, SIGNED_PREFIX + body)
    except (InvalidSignature, ValueError) as exc:
        raise BundleError(f"{BUNDLE_SIG}: the signature by {fp} does not match {BUNDLE_JSON} (the bundle was "
                          "altered after signing)") from exc
    return True, fp, bool(trusted)


def _parse_manifest(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{BUNDLE_JSON}: unreadable ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{BUNDLE_JSON}: not a ripeye model bundle manifest")
    if not isinstance(data.get("format_version"), int) or data["format_version"] > FORMAT_VERSION:
        raise BundleError(f"{BUNDLE_JSON}: format_version {data.get('format_version')!r}; this ripeye reads up to "
                          f"{FORMAT_VERSION}")
    if not isinstance(data.get("version"), str) or not VERSION_RE.match(data["version"]):
        raise BundleError(f"{BUNDLE_JSON}: version {data.get('version')!r} is not a valid version")
    if not isinstance(data.get("name"), str):
        raise BundleError(f"{BUNDLE_JSON}: name must be a string")
    names = data.get("class_names")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise BundleError(f"{BUNDLE_JSON}: class_names must be a list of strings")
    size = data.get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise BundleError(f"{BUNDLE_JSON}: input_size must be [height, width]")
    files = data.get("files")
    if not isinstance(files, dict) or not files or len(files) > MAX_FILES:
        raise BundleError(f"{BUNDLE_JSON}: files must list the bundle's files")
    for rel, entry in files.items():
        problem = _member_name_problem(rel)
        if problem or rel in (BUNDLE_JSON, BUNDLE_SIG):
            raise BundleError(f"{rel}: listed in {BUNDLE_JSON} with {problem or 'a reserved name'}")
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and entry["size"] >= 0
                and isinstance(entry.get("sha256"), str) and SHA256_RE.match(entry["sha256"])):
            raise BundleError(f"{rel}: its {BUNDLE_JSON} entry needs size and sha256")
    if "metadata.json" not in files:
        raise BundleError(f"{BUNDLE_JSON}: metadata.json is not in the bundle")
    return data


def _read_member(tf: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if member.size > limit:
        raise BundleError(f"{member.name}: {member.size} bytes, more than the {limit} allowed")
    f = tf.extractfile(member)
    data = f.read() if f else b""
    if len(data) != member.size:
        raise BundleError(f"{member.name}: truncated ({len(data)} of {member.size} bytes)")
    return data


def _member_problem(member: tarfile.TarInfo) -> Optional[str]:
    problem = _member_name_problem(member.name)
    if problem:
        return f"{problem} in the archive; refused"
    if member.issym():
        return f"a symbolic link (to {member.linkname}) in the archive; a bundle holds regular files only"
    if member.islnk():
        return f"a hard link (to {member.linkname}) in the archive; a bundle holds regular files only"
    if not member.isreg() or member.issparse():
        return f"{'a directory' if member.isdir() else 'not a regular file'} in the archive; a bundle holds " \
               "regular files only"
    return None


def _check_metadata(metadata_bytes: bytes, manifest: dict) -> None:
    """bundle.json's classes and input size must be metadata.json's (the device checks a candidate by them)."""
    try:
        meta = json.loads(metadata_bytes)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"metadata.json: unreadable ({exc})") from exc
    if not isinstance(meta, dict):
        raise BundleError("metadata.json: not a JSON object")
    for key in ("class_names", "input_size"):
        if key in meta and meta[key] != manifest[key]:
            raise BundleError(f"metadata.json: {key} {meta[key]} differs from {BUNDLE_JSON} ({manifest[key]})")


def _walk_bundle(path: Path, trusted: dict[str, bytes], sink=None) -> BundleInfo:
    """Read the bundle once, front to back, checking everything (archive_sha256 included). sink(rel, chunks), when
    given, receives each model file as an iterator of byte chunks that it must consume; the file is checked after."""
    archive_hash = hashlib.sha256()
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    current = BUNDLE_JSON
    body: Optional[bytes] = None
    sig_bytes: Optional[bytes] = None
    manifest: dict = {}
    signature: Optional[tuple[bool, Optional[str], bool]] = None
    seen: set[str] = set()
    metadata = bytearray()
    try:
        with raw, tarfile.open(fileobj=_HashingReader(raw, archive_hash), mode="r|*") as tf:
            for member in tf:
                current = member.name
                problem = _member_problem(member)
                if problem:
                    raise BundleError(f"{member.name}: {problem}")
                if member.name in seen:
                    raise BundleError(f"{member.name}: appears twice in the archive")
                seen.add(member.name)
                if body is None:
                    if member.name != BUNDLE_JSON:
                        raise BundleError(f"{BUNDLE_JSON}: missing (the archive begins with {member.name}; "
                                          "not a ripeye model bundle)")
                    body = _read_member(tf, member, MAX_BUNDLE_JSON)
                    manifest = _parse_manifest(body)
                    continue
                if member.name == BUNDLE_SIG:
                    if len(seen) != 2:
                        raise BundleError(f"{BUNDLE_SIG}: must directly follow {BUNDLE_JSON}")
                    sig_bytes = _read_member(tf, member, MAX_SIG)
                    continue
                if signature is None:  # before reading any model file: an untrusted bundle costs nothing more
                    signature = _check_signature(sig_bytes, body, trusted)
                entry = manifest["files"].get(member.name)
                if entry is None:
                    raise BundleError(f"{member.name}: in the archive but not listed in {BUNDLE_JSON}; refused")
                if member.size != entry["size"]:
                    raise BundleError(f"{member.name}: {member.size} bytes in the archive, {entry['size']} listed in "
                                      f"{BUNDLE_JSON}")
                f = tf.extractfile(member)
                h = hashlib.sha256()
                got = [0]

                def chunks(f=f, h=h, got=got, keep=member.name == "metadata.json"):
                    while True:
                        chunk = f.read(CHUNK)
                        if not chunk:
                            return
                        h.update(chunk)
                        got[0] += len(chunk)
                        if keep:
                            metadata.extend(chunk)
                        yield chunk

                if sink is not None:
                    sink(member.name, chunks())
                for _ in chunks():  # what the sink left (all of it when there is none)
                    pass
                if got[0] != entry["size"]:
                    raise BundleError(f"{member.name}: truncated ({got[0]} of {entry['size']} bytes)")
                if h.hexdigest() != entry["sha256"]:
                    raise BundleError(f"{member.name}: SHA-256 {h.hexdigest()[:12]}… does not match {BUNDLE_JSON} "
                                      f"({entry['sha256'][:12]}…): the file was altered or damaged")
            current = path.name
            if body is None:
                raise BundleError(f"{path}: an empty archive, not a ripeye model bundle")
            if signature is None:
                signature = _check_signature(sig_bytes, body, trusted)
            missing = sorted(set(manifest["files"]) - seen)
            if missing:
                raise BundleError(f"{missing[0]}: listed in {BUNDLE_JSON} but missing from the archive (truncated?)"
                                  + (f"; {len(missing) - 1} more missing" if len(missing) > 1 else ""))
            for chunk in iter(lambda: raw.read(CHUNK), b""):  # the rest of the file: end blocks and padding
                archive_hash.update(chunk)
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BundleError(f"{current}: truncated or unreadable archive {path} ({type(exc).__name__}: {exc})"
                          ) from exc
    _check_metadata(bytes(metadata), manifest)
    signed, signer, is_trusted = signature
    return BundleInfo(path=path, name=manifest["name"], version=manifest["version"],
                      class_names=list(manifest["class_names"]), input_size=tuple(manifest["input_size"]),
                      input_sizes=list(manifest.get("input_sizes") or []),
                      default_input_size=manifest.get("default_input_size"),
                      created_at=str(manifest.get("created_at", "")), files=manifest["files"],
                      archive_sha256=archive_hash.hexdigest(), signed=signed, signer=signer, trusted=is_trusted,
                      manifest=manifest, raw_manifest=body, raw_signature=sig_bytes)


def verify_bundle(path: Union[str, os.PathLike], trusted_keys: Optional[Iterable] = None) -> BundleInfo:
    """Check a bundle file completely (see the module doc); its BundleInfo, or BundleError naming the file.
    trusted_keys: public keys (base64, PEM, or files holding either); when any are given the bundle must be signed
    by one of them."""
    try:
        trusted = trusted_key_set(trusted_keys)
    except ValueError as exc:
        raise BundleError(f"trusted key {exc}") from exc
    return _walk_bundle(Path(path).expanduser(), trusted)


# ---------------------------------------------------------------------------------------------------- unpacking

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _content_difference(root: Path, expected: dict[str, dict], skip: Iterable[str] = ()) -> Optional[str]:
    """None when root holds exactly the expected files (relative path -> size, sha256), besides those in skip, as
    regular files; else the first difference, naming the file."""
    present: dict[str, Path] = {}
    for dirpath, dirnames, names in os.walk(root, followlinks=False):
        for n in names + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            p = Path(dirpath) / n
            present[p.relative_to(root).as_posix()] = p
    for name in skip:
        present.pop(name, None)
    for rel in sorted(set(present) | set(expected)):
        if rel not in expected:
            return f"{rel} is not in the bundle"
        if rel not in present:
            return f"{rel} is missing"
        p = present[rel]
        if p.is_symlink() or not p.is_file():
            return f"{rel} is not a regular file"
        sha, size = _sha256_file(p)
        if size != expected[rel]["size"] or sha != expected[rel]["sha256"]:
            return f"{rel} differs from the bundle (SHA-256 {sha[:12]}…, listed {expected[rel]['sha256'][:12]}…)"
    return None


def _write_file(root: Path, rel: str, chunks: Iterable[bytes]) -> None:
    """Write one file of the bundle under root (never outside it, never through a link), fsynced. A failed write
    (a full disk, a file-size limit) is a BundleError naming the file; errors reading `chunks` pass through."""
    target = Path(os.path.abspath(root / rel))
    if os.path.commonpath([str(root), str(target)]) != str(root):
        raise BundleError(f"{rel}: outside the destination; refused")

    def failed(exc: OSError) -> BundleError:
        return BundleError(f"{rel}: cannot write {target} ({exc.strerror or exc})")

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise failed(exc) from exc
    with open(fd, "wb", buffering=0, closefd=True) as f:
        for chunk in chunks:
            try:
                view = memoryview(chunk)
                while view:
                    view = view[f.write(view):]
            except OSError as exc:
                raise failed(exc) from exc
        try:
            os.fsync(f.fileno())
        except OSError as exc:
            raise failed(exc) from exc


PARTIAL = ".partial-"


def partial_prefix(dest: Path) -> str:
    """The name prefix of dest's temporary siblings while it is unpacked."""
    return f".{dest.name}{PARTIAL}"


def _clean_leftovers(dest: Path) -> None:
    """Remove the partial siblings killed unpacks left in dest's parent: dest's own (its lock is held by the caller)
    and any other's whose lock nobody holds."""
    import fcntl

    for p in dest.parent.glob(f".*{PARTIAL}*"):
        name = p.name[1:p.name.rindex(PARTIAL)]
        fd = None
        try:
            if name != dest.name:
                try:
                    fd = os.open(dest.parent / f".{name}.lock", os.O_RDONLY)
                except OSError:
                    pass  # no lock file: no unpack of ours made it
                else:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held (OSError): that unpack is alive
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        except OSError:
            continue
        finally:
            if fd is not None:
                os.close(fd)


def unpack_bundle(path: Union[str, os.PathLike], dest_dir: Union[str, os.PathLike],
                  trusted_keys: Optional[Iterable] = None) -> Path:
    """Verify the bundle and install its model folder at dest_dir atomically (see the module doc). dest_dir is the
    model folder itself (e.g. state_dir/models/<version>), created whole or not at all; returns it. An existing
    dest_dir holding the bundle's files is returned as it is; one with other content is refused (BundleError)."""
    import fcntl

    path = Path(path).expanduser()
    dest = Path(os.path.abspath(Path(dest_dir).expanduser()))
    try:
        trusted = trusted_key_set(trusted_keys)
    except ValueError as exc:
        raise BundleError(f"trusted key {exc}") from exc
    info = _walk_bundle(path, trusted)  # nothing is written for a bundle that is refused
    provenance = (BUNDLE_JSON, BUNDLE_SIG)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(dest.parent / f".{dest.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise BundleError(f"{dest}: cannot unpack there ({exc.strerror or exc})") from exc
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        _clean_leftovers(dest)  # we hold the lock: a partial sibling is what a killed unpack left
        if os.path.lexists(dest):
            if dest.is_symlink() or not dest.is_dir():
                raise BundleError(f"{dest}: exists and is not a folder; not replaced")
            problem = _content_difference(dest, info.files, skip=provenance)
            if problem:
                raise BundleError(f"{dest}: exists with different content ({problem}); not replaced")
            return dest
        tmp = dest.parent / f"{partial_prefix(dest)}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir(mode=0o755)
            again = _walk_bundle(path, trusted, lambda rel, chunks: _write_file(tmp, rel, chunks))
            if again.raw_manifest != info.raw_manifest:
                raise BundleError(f"{path}: changed while being unpacked")
            problem = _content_difference(tmp, info.files)  # read back what landed on disk
            if problem:
                raise BundleError(f"{dest}: after writing, {problem}")
            _write_file(tmp, BUNDLE_JSON, [again.raw_manifest])
            if again.raw_signature is not None:
                _write_file(tmp, BUNDLE_SIG, [again.raw_signature])
            for dirpath, _dirs, _names in sorted(os.walk(tmp), key=lambda t: -len(t[0])):
                _fsync_dir(Path(dirpath))
            os.rename(tmp, dest)  # dest does not exist (checked under the lock): atomic
            _fsync_dir(dest.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest
    except OSError as exc:
        raise BundleError(f"{dest}: cannot unpack there ({exc.strerror or exc})") from exc
    finally:
        os.close(lock_fd)


# ---------------------------------------------------------------------------------------------- command line

def _fail(command: str, exc: Exception, code: int = 1) -> int:
    print(f"ripeye model {command}: {exc}", file=sys.stderr)
    return code


def _describe(info: BundleInfo) -> str:
    sizes = ", ".join(str(n) for n in info.input_sizes) or f"{info.input_size[0]}"
    if info.signed:
        sig = f"signed by {info.signer}" + (" (a trusted key)" if info.trusted else " (no trusted keys given)")
    else:
        sig = "unsigned"
    return (f"name:      {info.name}\nversion:   {info.version}\nclasses:   {', '.join(info.class_names)}\n"
            f"sizes:     {sizes} (input {info.input_size[0]}x{info.input_size[1]}"
            f"{f', default {info.default_input_size}' if info.default_input_size else ''})\n"
            f"files:     {len(info.files)} ({info.total_bytes / 1e6:.1f} MB)\ncreated:   {info.created_at}\n"
            f"signature: {sig}\nsha256:    {info.archive_sha256}")


def cmd_pack(args) -> int:
    try:
        info = pack(args.folder, args.out, sign_key=args.sign, version=args.version,
                    compress=True if args.gzip else None)
    except (BundleError, OSError) as exc:
        return _fail("pack", exc, 2 if isinstance(exc, OSError) else 1)
    print(f"{args.out}: packed {args.folder}\n{_describe(info)}")
    return 0


def cmd_verify(args) -> int:
    try:
        trusted = trusted_key_set(args.trusted_key)
    except ValueError as exc:
        return _fail("verify", f"--trusted-key {exc}", 2)
    try:
        info = verify_bundle(args.bundle, list(trusted.values()))
    except BundleError as exc:
        return _fail("verify", f"{args.bundle}: REFUSED: {exc}")
    if args.json:
        print(json.dumps(info.to_json()))
    else:
        print(f"{args.bundle}: OK\n{_describe(info)}")
    return 0


def cmd_keygen(args) -> int:
    try:
        private, public, fp = keygen(args.out, args.name)
    except (BundleError, OSError) as exc:
        return _fail("keygen", exc, 2)
    print(f"private key: {private} (mode 0600; keep it off the devices)\npublic key:  {public} ({fp})\n"
          f"trusted key (for --trusted-key, and a device's list of trusted keys): {public.read_text().strip()}")
    return 0


def add_arguments(parser) -> None:
    """The `ripeye model` subcommands: pack, verify, keygen."""
    sub = parser.add_subparsers(dest="model_command", required=True)
    pk = sub.add_parser("pack", help="pack a model folder into one verified bundle (optionally signed)")
    pk.add_argument("folder", help="model folder (metadata.json, manifest.json, artifacts, sizes/)")
    pk.add_argument("--out", "-o", required=True, help="bundle file to write (.tar, or .tar.gz / .tgz to gzip)")
    pk.add_argument("--sign", metavar="KEY", help="Ed25519 private key (PEM, from `ripeye model keygen`)")
    pk.add_argument("--version", help="bundle version (default: the model's, the first 12 hex of its ONNX SHA-256)")
    pk.add_argument("--gzip", action="store_true", help="gzip whatever --out is called")
    pk.set_defaults(func=cmd_pack)
    ve = sub.add_parser("verify", help="check a bundle: every file's size and SHA-256, paths, signature")
    ve.add_argument("bundle")
    ve.add_argument("--trusted-key", action="append", metavar="PUB",
                    help="public key (base64, or a .pub / PEM file); repeatable. Given: a signature by one is required")
    ve.add_argument("--json", action="store_true", help="print the bundle's description as one JSON line")
    ve.set_defaults(func=cmd_verify)
    kg = sub.add_parser("keygen", help="write an Ed25519 signing key pair")
    kg.add_argument("--out", required=True, metavar="DIR", help="folder for <name>.key (0600) and <name>.pub")
    kg.add_argument("--name", default=KEY_NAME, help=f"file name stem (default {KEY_NAME})")
    kg.set_defaults(func=cmd_keygen)
