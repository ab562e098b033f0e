#!/usr/bin/env python3
"""Packs files into a single-layer container image, written as a docker-archive
tar that `ctr images import` (and `docker load`) accept. No Docker, no registry.

    mkimage.py --tag docker.io/kvcluster/kvserver:0.1.0 --out kvserver.tar \
        --file target/debug/kvserver:/usr/local/bin/kvserver --with-libs \
        --entrypoint /usr/local/bin/kvserver --user 10001

--with-libs adds the shared libraries (from `ldd`) of every packed ELF file, so a
dynamically linked Rust binary runs on an otherwise empty root filesystem.
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time


def ldd_libs(path):
    out = subprocess.run(["ldd", path], capture_output=True, text=True)
    if out.returncode != 0:  # static binary
        return []
    libs = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libs.append(target)
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])  # the dynamic loader
    return libs


def add_dir(tar, path, mode=0o755):
    info = tarfile.TarInfo(path.lstrip("/"))
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.mtime = 0
    tar.addfile(info)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", required=True, help="full reference, e.g. docker.io/kvcluster/kvserver:0.1.0")
    ap.add_argument("--out", required=True)
    ap.add_argument("--file", action="append", default=[], help="SRC:DST (DST absolute)")
    ap.add_argument("--link", action="append", default=[], help="DST:TARGET symlink")
    ap.add_argument("--with-libs", action="store_true")
    ap.add_argument("--entrypoint", nargs="*", default=[])
    ap.add_argument("--user", default="")
    ap.add_argument("--env", action="append", default=[])
    args = ap.parse_args()
    if ":" not in args.tag.rsplit("/", 1)[-1] or args.tag.endswith(":latest"):
        ap.error("--tag needs an explicit, non-latest tag (so the kubelet never tries to pull it)")

    files = []
    for spec in args.file:
        src, dst = spec.split(":", 1)
        if not os.path.isfile(src):
            ap.error(f"--file {spec}: {src} does not exist")
        files.append((src, dst))
    if args.with_libs:
        for src, _ in list(files):
            for lib in ldd_libs(src):
                real = os.path.realpath(lib)
                files.append((real, lib))
    seen, uniq = set(), []
    for src, dst in files:
        if dst not in seen:
            seen.add(dst)
            uniq.append((src, dst))

    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.GNU_FORMAT) as layer:
        dirs = {"/tmp", "/etc", "/data"}
        for _, dst in uniq:
            d = os.path.dirname(dst)
            while d not in ("/", ""):
                dirs.add(d)
                d = os.path.dirname(d)
        for link, _ in (l.split(":", 1) for l in args.link):
            dirs.add(os.path.dirname(link))
        for d in sorted(dirs):
            add_dir(layer, d, 0o1777 if d in ("/tmp", "/data") else 0o755)
        # A passwd entry for the image's user (some libraries look the user up).
        passwd = b"root:x:0:0:root:/root:/bin/sh\nkv:x:10001:10001:kv:/data:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.mode, info.mtime = len(passwd), 0o644, 0
        layer.addfile(info, io.BytesIO(passwd))
        for src, dst in uniq:
            info = layer.gettarinfo(src, arcname=dst.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(src, "rb") as f:
                layer.addfile(info, f)
        for spec in args.link:
            dst, target = spec.split(":", 1)
            info = tarfile.TarInfo(dst.lstrip("/"))
            info.type = tarfile.SYMTYPE
            info.linkname = target
            info.mtime = 0
            layer.addfile(info)
    layer_bytes = layer_buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()

    env = ["PATH=/usr/local/bin:/usr/bin:/bin"] + args.env
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0)),
        "config": {"Entrypoint": args.entrypoint or None, "Env": env, "User": args.user, "WorkingDir": "/data"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "e2e/local/mkimage.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.split(":")[1] + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [args.tag], "Layers": [layer_name]}]

    with tarfile.open(args.out, "w") as out:
        for name, data in (
            (config_name, config_bytes),
            (layer_name, layer_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            out.addfile(info, io.BytesIO(data))
    print(f"{args.tag}: {len(uniq)} files, {len(layer_bytes) // 1024} KiB -> {args.out}")


if __name__ == "__main__":
    main()
