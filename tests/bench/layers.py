#!/usr/bin/env python3
"""The layer-incremental scenario (run through tests/bench/layers.sh): a base layer of real
files (BENCH_SIZE_MB, default 500) plus a 1 MiB top layer, rebuilt with only the top changed.
Byte counts come from a counting proxy in front of LocalStack (tests/bench/proxy.py), never from
s3dock's report. Writes its section of docs/benchmarks.md (between the layers markers)."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import proxy  # noqa: E402

BEGIN, END = "<!-- layers:begin -->", "<!-- layers:end -->"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
}


def git(ctx, *args):
    subprocess.run(["git", *args], cwd=ctx, check=True, env={**os.environ, **GIT_ENV}, capture_output=True)


def build(ctx, app, top_seed):
    (ctx / "top.bin").write_bytes(os.urandom(1 << 20) if top_seed else b"")
    git(ctx, "add", "Dockerfile", "top.bin")
    git(ctx, "commit", "-q", "--allow-empty", "-m", f"top {top_seed}")
    out = subprocess.run([bench.S3DOCK, "build", app, "--context", str(ctx)], capture_output=True, text=True,
                         check=True)
    image = out.stdout.strip()
    iid = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True,
                         text=True, check=True).stdout.strip()
    return image, iid


def main():
    up = urlparse(bench.ENDPOINT)
    port, counter, server = proxy.start(up.hostname, up.port or 80)
    endpoint = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="s3dock-layers-"))
    bucket = f"s3dock-layers-{int(time.time())}"
    subprocess.run(bench.aws(f"s3 mb s3://{bucket}"), shell=True, check=True, capture_output=True)
    cfg = work / "config.toml"
    cfg.write_text(
        f'[profiles.default]\nstore = "s3://{bucket}/s3dock"\nendpoint = "{endpoint}"\n'
        f'path_style = true\nregion = "us-east-1"\nevents = "inline"\n'
    )
    env = {"S3DOCK_CONFIG": str(cfg)}
    senv = {**os.environ, **env}
    rows = []

    def run(name, cmd, counted=True):
        counter.take()
        fig = bench.measure(name, cmd, env)
        fig["up"], fig["down"] = counter.take() if counted else (None, None)
        rows.append(fig)
        return fig

    images = []
    try:
        app = "layers"
        ctx = work / app
        ctx.mkdir()
        real = bench.make_rootfs(ctx / "rootfs.tar", bench.SIZE_MB)
        (ctx / "Dockerfile").write_text("FROM scratch\nLABEL bench=layers\nADD rootfs.tar /\nCOPY top.bin /top.bin\n")
        git(ctx, "init", "-q")
        one, _ = build(ctx, app, 1)
        time.sleep(61)  # the next commit gets the next minute: another tag
        two, id2 = build(ctx, app, 2)
        images += [one, two]
        bench.log(f"built {one} and {two} ({real / 2**20:.0f} MiB of files + 1 MiB top)")

        floor = run("docker save | wc -c (the floor)", f"docker save {two} | wc -c", counted=False)
        full_push = run("push, full (first image)", f"{bench.S3DOCK} push {one} --json")
        inc_push = run("push, incremental (rebuild)", f"{bench.S3DOCK} push {two} --json")
        pushed = json.loads(inc_push["stdout"])
        for image, envname in ((two, "production"), (one, "staging")):
            subprocess.run([bench.S3DOCK, "promote", image, envname], env=senv, check=True, capture_output=True)

        subprocess.run(["docker", "rmi", "-f", one, two], capture_output=True)
        full_pull = run("pull, full (host has neither)", f"{bench.S3DOCK} pull {app} production --json")
        subprocess.run([bench.S3DOCK, "pull", app, "staging"], env=senv, check=True, capture_output=True)
        subprocess.run(["docker", "rmi", "-f", two], check=True, capture_output=True)
        inc_pull = run("pull, incremental (host has the first)", f"{bench.S3DOCK} pull {app} production --json")
        pulled = json.loads(inc_pull["stdout"])

        # The composed object is a plain archive: aws s3 cp | gunzip | docker load.
        subprocess.run(["docker", "rmi", "-f", one, two], capture_output=True)
        key = f"s3://{bucket}/s3dock/{pushed['archive_key']}"
        run("aws s3 cp - | gunzip | docker load (composed object)", bench.aws(f"s3 cp {key} -") + " | gunzip | docker load")
        loaded = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", two], capture_output=True,
                                text=True).stdout.strip()

        # An interrupted composed push leaves nothing visible.
        subprocess.run([bench.S3DOCK, "pull", app, "staging"], env=senv, check=True, capture_output=True)
        time.sleep(61)
        three, _ = build(ctx, app, 3)
        images.append(three)
        p = subprocess.Popen([bench.S3DOCK, "push", three], env=senv, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(float(os.environ.get("BENCH_INTERRUPT_AFTER", "0.8")))
        p.send_signal(signal.SIGINT)
        code = p.wait()
        stem = three.split(":")[1]
        listed = subprocess.run(bench.aws(f"s3 ls --recursive s3://{bucket}/s3dock/images/"), shell=True,
                                capture_output=True, text=True).stdout
        uploads = subprocess.run(bench.aws(f"s3api list-multipart-uploads --bucket {bucket}"), shell=True,
                                 capture_output=True, text=True).stdout
        interrupted = {
            "exit": code,
            "visible": [l for l in listed.splitlines() if stem in l],
            "uploads_left": "UploadId" in uploads,
        }
        bench.log(f"interrupted push: {interrupted}")

        report(rows, floor, full_push, inc_push, full_pull, inc_pull, pushed, pulled, loaded == id2, interrupted,
               real)
    finally:
        for image in images:
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
        subprocess.run(bench.aws(f"s3 rb s3://{bucket} --force"), shell=True, capture_output=True)
        server.shutdown()


def mib(n):
    return "—" if n is None else f"{n / 2**20:.1f} MiB"


def report(rows, floor, full_push, inc_push, full_pull, inc_pull, pushed, pulled, loads, interrupted, real):
    floor_bytes = int(floor["stdout"].strip() or 0)
    lines = [
        BEGIN,
        f"Measured {time.strftime('%Y-%m-%d')} on {bench.machine()}: a {real / 2**20:.0f} MiB base layer of real",
        "files plus a 1 MiB top layer of random bytes, rebuilt with only the top changed; LocalStack",
        "behind a counting proxy (`tests/bench/proxy.py`), one run, `tests/bench/layers.sh`,"
        f" {os.environ.get('BENCH_BUILD', 'release')} build of s3dock.",
        "",
        "| step | wall | bytes up | bytes down | peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name'].replace('|', chr(92) + '|')} | {r['wall']:.2f} s | {mib(r['up'])} | {mib(r['down'])} | {r['rss_mb']:.0f} MiB |")
    push_bytes = inc_push["up"] / full_push["up"]
    push_wall = inc_push["wall"] / full_push["wall"]
    pull_bytes = inc_pull["down"] / full_pull["down"]
    pull_wall = inc_pull["wall"] / full_pull["wall"]
    reused = sum(l["bytes"] for l in pushed.get("layers", []) if l.get("reused_from"))
    lines += [
        "",
        f"- incremental push: {push_bytes:.1%} of the full push's bytes up, {push_wall:.2f}x its wall time"
        f" (targets: at most 5%, 0.5x); {mib(reused)} composed on the server with UploadPartCopy.",
        f"- the floor on this engine (Docker 20.10, no per-layer export): `docker save` alone streams"
        f" {mib(floor_bytes)} in {floor['wall']:.2f} s, {floor['wall'] / full_push['wall']:.2f}x the full push;"
        f" the incremental push takes {inc_push['wall'] / floor['wall']:.2f}x that floor.",
        f"- incremental pull: {pull_bytes:.1%} of the full pull's bytes down, {pull_wall:.2f}x its wall time"
        f" (targets: at most 5%, 0.3x); the engine had {(pulled.get('partial') or {}).get('layers_present')}"
        f" of {(pulled.get('partial') or {}).get('layers')} layers.",
        f"- the composed object loads with `aws s3 cp - | gunzip | docker load` to the rebuild's image id:"
        f" {'yes' if loads else 'NO'}.",
        (f"- a composed push interrupted with SIGINT (exit {interrupted['exit']}) left"
         f" {len(interrupted['visible'])} visible objects and"
         f" {'an' if interrupted['uploads_left'] else 'no'} unfinished multipart upload."
         if interrupted["exit"] != 0 else
         "- the interrupted push completed before the signal: no figure (raise BENCH_INTERRUPT_AFTER's precision)."),
        END,
    ]
    text = "\n".join(lines)
    print(text)
    doc = bench.REPORT.read_text() if bench.REPORT.exists() else ""
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip() + "\n\n## Layer-incremental push and pull\n\n" + text + "\n"
    bench.REPORT.write_text(doc)
    bench.log(f"wrote {bench.REPORT}")


if __name__ == "__main__":
    main()
