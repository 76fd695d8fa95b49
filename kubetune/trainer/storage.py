"""The one module that touches object storage: s3:// through boto3's transfer manager, file:// for local runs.

Downloads go through a local cache keyed by the object's ETag (or size and mtime for files), so a restarted pod
does not fetch a multi-gigabyte base model again. Credentials come from boto3's default chain (environment,
web identity / IRSA, instance profile); nothing here ever logs them.
"""
import hashlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from kubetune.api.spec import Storage
from kubetune.trainer.errors import BadInput, TrainerError


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


class Store:
    """Read and write s3:// and file:// URIs with one interface."""

    def __init__(self, storage: Storage, cache_dir: Path):
        self.storage = storage
        self.cache_dir = cache_dir
        self._s3 = None

    # --- S3 plumbing -------------------------------------------------------------------------------------
    @property
    def s3(self):
        if self._s3 is None:
            import boto3
            from botocore.config import Config

            style = self.storage.addressing_style
            if style == "auto":
                style = "path" if self.storage.endpoint else "virtual"
            # A session of its own: boto3's default session caches the credentials it resolved first.
            self._session = boto3.session.Session()
            self._s3 = self._session.client(
                "s3", endpoint_url=self.storage.endpoint, region_name=self.storage.region,
                config=Config(s3={"addressing_style": style}, retries={"max_attempts": 8, "mode": "adaptive"}),
            )
        return self._s3

    def _transfer(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=8)

    @staticmethod
    def _split(uri: str) -> tuple[str, str]:
        parsed = urlparse(uri)
        return parsed.netloc, parsed.path.lstrip("/")

    def _s3_call(self, what: str, uri: str, fn):
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn()
        except NoCredentialsError as exc:
            raise BadInput(f"no S3 credentials for {uri}: set storage.secretRef or give the pod an identity") from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise BadInput(f"{what}: bucket {self._split(uri)[0]} of {uri} does not exist") from exc
            if code in ("404", "NoSuchKey"):
                raise BadInput(f"{what}: {uri} does not exist") from exc
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                creds = self._session.get_credentials()  # the key id names whose access failed; never the secret
                raise BadInput(f"{what}: access to {uri} denied ({code}) for access key id "
                               f"{creds.access_key if creds else '(none)'}; check the credentials (storage.secretRef) "
                               "and the bucket policy") from exc
            raise TrainerError(f"{what}: {uri}: {code or exc}") from exc
        except BotoCoreError as exc:
            raise TrainerError(f"{what}: {uri}: {exc}") from exc

    # --- Public interface --------------------------------------------------------------------------------
    def list(self, uri: str, what: str = "list") -> list[str]:
        """URIs of every object under a prefix (or the one object named)."""
        if uri.startswith("file://"):
            path = Path(urlparse(uri).path)
            if path.is_file():
                return [uri]
            return sorted(f"file://{p}" for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        bucket, key = self._split(uri)

        def pages():
            out = []
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                out += [f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", [])]
            return out

        return sorted(self._s3_call(what, uri, pages))

    def exists(self, uri: str, what: str = "head") -> bool:
        if uri.startswith("file://"):
            return Path(urlparse(uri).path).exists()
        from botocore.exceptions import ClientError

        bucket, key = self._split(uri)

        def probe() -> bool:
            try:
                self.s3.head_object(Bucket=bucket, Key=key)
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

        return self._s3_call(what, uri, probe)

    def fetch(self, uri: str, what: str) -> Path:
        """A local path holding the file, or the directory of every object under the prefix (cached)."""
        if uri.startswith("file://"):
            path = Path(urlparse(uri).path)
            if not path.exists():
                raise BadInput(f"{what}: {uri} does not exist")
            return path
        objects = self.list(uri, what)
        if not objects:
            raise BadInput(f"{what}: nothing at {uri}")
        bucket, key = self._split(uri)
        single = objects == [uri.rstrip("/")] and not uri.endswith("/")
        root = self.cache_dir / "s3" / bucket / key.rstrip("/")

        def get(obj: str) -> None:
            _, okey = self._split(obj)
            dest = root if single else root / okey[len(key):].lstrip("/")
            head = self._s3_call(what, obj, lambda: self.s3.head_object(Bucket=bucket, Key=okey))
            stamp = dest.with_name(dest.name + ".etag")
            if dest.exists() and stamp.exists() and stamp.read_text() == head["ETag"]:
                return
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            self._s3_call(what, obj, lambda: self.s3.download_file(bucket, okey, str(part),
                                                                   Config=self._transfer()))
            part.replace(dest)
            stamp.write_text(head["ETag"])

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(get, objects))
        return root

    def etags(self, uri: str, what: str) -> dict[str, str]:
        """The ETag of every s3:// object `fetch` would download, from the listing alone: a fingerprint of remote
        data that needs no download (tokenized.py keys its cache with it)."""
        bucket, key = self._split(uri)

        def pages() -> dict[str, str]:
            out = {}
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                out.update({f"s3://{bucket}/{o['Key']}": o["ETag"] for o in page.get("Contents", [])})
            return out

        tags = self._s3_call(what, uri, pages)
        if not tags:
            raise BadInput(f"{what}: nothing at {uri}")
        return dict(sorted(tags.items()))

    def put_file(self, local: Path, uri: str) -> None:
        if uri.startswith("file://"):
            dest = Path(urlparse(uri).path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, dest.with_name(dest.name + ".part"))
            dest.with_name(dest.name + ".part").replace(dest)
            return
        bucket, key = self._split(uri)
        self._s3_call("upload", uri, lambda: self.s3.upload_file(str(local), bucket, key, Config=self._transfer()))

    def put_dir(self, local: Path, uri: str) -> None:
        files = [p for p in sorted(local.rglob("*")) if p.is_file()]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda p: self.put_file(p, join(uri, str(p.relative_to(local)))), files))

    def put_text(self, text: str, uri: str) -> None:
        tmp = self.cache_dir / "upload" / hashlib.sha1(uri.encode()).hexdigest()
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        self.put_file(tmp, uri)

    def get_text(self, uri: str) -> str:
        if uri.startswith("file://"):
            return Path(urlparse(uri).path).read_text()
        bucket, key = self._split(uri)
        body = self._s3_call("read", uri, lambda: self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        return body.decode()

    def delete_prefix(self, uri: str) -> None:
        """Removes what this run wrote under `uri` (old checkpoints); never called on anything else."""
        if uri.startswith("file://"):
            shutil.rmtree(Path(urlparse(uri).path), ignore_errors=True)
            return
        bucket = self._split(uri)[0]
        for obj in self.list(join(uri, "")):
            self._s3_call("delete", obj, lambda o=obj: self.s3.delete_object(Bucket=bucket, Key=self._split(o)[1]))

    # --- Conditional writes and server-side copies (promotion.py) -------------------------------------------
    def get_versioned(self, uri: str, what: str = "read") -> tuple[str | None, str | None]:
        """The object's text and its version (S3: the ETag; file://: a hash of the content), or (None, None)
        when there is no object: the version a conditional write (`put_text_if`) is made against."""
        if uri.startswith("file://"):
            path = Path(urlparse(uri).path)
            if not path.is_file():
                return None, None
            data = path.read_bytes()
            return data.decode(), hashlib.sha256(data).hexdigest()
        from botocore.exceptions import ClientError

        bucket, key = self._split(uri)

        def get():
            try:
                response = self.s3.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None, None
                raise
            return response["Body"].read().decode(), response["ETag"]

        return self._s3_call(what, uri, get)

    def put_text_if(self, text: str, uri: str, version: str | None, what: str = "conditional write") -> bool:
        """Writes `text` only if the object is still at `version` (None: only if there is no object yet); False,
        and nothing written, when another writer changed it first. S3: a conditional PUT (If-Match on the ETag,
        If-None-Match: *), which S3 and MinIO decide atomically; file://: the same under an exclusive lock."""
        if uri.startswith("file://"):
            import fcntl

            path = Path(urlparse(uri).path)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_name(path.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if self.get_versioned(uri)[1] != version:
                    return False
                part = path.with_name(path.name + ".part")
                part.write_text(text)
                part.replace(path)
                return True
        from botocore.exceptions import ClientError

        bucket, key = self._split(uri)
        condition = {"IfMatch": version} if version is not None else {"IfNoneMatch": "*"}

        def put() -> bool:
            try:
                self.s3.put_object(Bucket=bucket, Key=key, Body=text.encode(), ContentType="application/json",
                                   **condition)
                return True
            except ClientError as exc:
                # 412: the condition failed; 409: a concurrent conditional write to the key won (S3 asks to retry,
                # which would then fail the condition). 404 NoSuchKey: If-Match on an object deleted since.
                if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412",
                                                                  "ConditionalRequestConflict", "409", "NoSuchKey"):
                    return False
                raise

        return self._s3_call(what, uri, put)

    def copy_prefix(self, source: str, dest: str, skip: tuple[str, ...] = (), what: str = "copy") -> "list[str]":
        """Copies every object under `source` to the same relative key under `dest`, server-side on S3 (managed
        copy: multipart for large objects), skipping relative paths that start with one of `skip`. An object
        already at the destination is never overwritten (a copy interrupted halfway is completed, not redone).
        Returns the destination URIs."""
        source, dest = join(source, ""), join(dest, "")
        out = []
        for obj in self.list(source, what):
            rel = obj[len(source):]
            if not rel or rel.startswith(skip):
                continue
            target = dest + rel
            out.append(target)
            if self.exists(target, what):
                continue
            if source.startswith("file://"):
                path = Path(urlparse(target).path)
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(urlparse(obj).path, path.with_name(path.name + ".part"))
                path.with_name(path.name + ".part").replace(path)
                continue
            (sb, sk), (db, dk) = self._split(obj), self._split(target)
            self._s3_call(what, obj, lambda sb=sb, sk=sk, db=db, dk=dk: self.s3.copy(
                {"Bucket": sb, "Key": sk}, db, dk, Config=self._transfer()))
        return out
