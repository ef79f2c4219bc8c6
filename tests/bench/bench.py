#!/usr/bin/env python3
"""s3dock push/pull against the classic shell recipe, on the same machine and endpoint.

Run through tests/bench/run.sh, which starts LocalStack, builds the release binary and passes
the settings below in the environment. Measures, for each command:

  wall    elapsed seconds
  cpu     user + system seconds of the command and everything it started (not dockerd's, not
          the emulator's: those are reported apart)
  rss     peak resident memory of the largest single process of the command
  server  CPU seconds the S3 emulator spent meanwhile

and writes a Markdown report (table, ratios, the machine, the command that reproduces it).
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
S3DOCK = os.environ["S3DOCK_BIN"]
AWS = os.environ.get("AWS_BIN", "aws")
ENDPOINT = os.environ["S3DOCK_TEST_S3_ENDPOINT"]
EMULATOR_PID = int(os.environ.get("EMULATOR_PID", "0"))
SIZE_MB = int(os.environ.get("BENCH_SIZE_MB", "500"))
BIG_MB = int(os.environ.get("BENCH_BIG_MB", "1024"))
REPORT = Path(os.environ.get("BENCH_REPORT", ROOT / "docs" / "benchmarks.md"))
CORES = os.cpu_count() or 1
EXPERT_PUSH = f"expert push: docker save | pigz -p {CORES} -1 | aws s3 cp -"
EXPERT_PULL = "expert pull: aws s3 cp - | pigz -d | docker load"
SOURCES = ["/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/share", "/usr/lib"]


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def emulator_cpu():
    """CPU seconds (user + system) of the emulator process and its children so far."""
    if not EMULATOR_PID:
        return 0.0
    try:
        fields = Path(f"/proc/{EMULATOR_PID}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(f) for f in fields[11:15])
        return ticks / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def measure(name, cmd, env=None):
    """Runs `cmd` (a shell command) and returns its figures; fails loudly if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = emulator_cpu()
    start = time.monotonic()
    # Every command runs under its own /usr/bin/time so its peak RSS is its own, not the
    # largest of every child this script ever waited for.
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "bash", "-o", "pipefail", "-c", cmd],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"bench: {name} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    rss_kb = int(out.stderr.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    fig = {
        "name": name,
        "wall": wall,
        "cpu": cpu,
        "rss_mb": rss_kb / 1024,
        "server": emulator_cpu() - server_before,
        "stdout": out.stdout,
    }
    log(f"{name}: {wall:.2f}s wall, {cpu:.2f}s cpu, {fig['rss_mb']:.0f} MiB rss, {fig['server']:.1f}s server")
    return fig


def make_rootfs(path, size_mb):
    """A tar of real files (binaries, libraries, text) from /usr, about `size_mb` MiB."""
    budget = size_mb << 20
    total = 0
    seen = set()
    with tarfile.open(path, "w") as tar:
        for top in SOURCES:
            for dirpath, _, files in os.walk(top):
                for f in sorted(files):
                    p = os.path.join(dirpath, f)
                    try:
                        st = os.lstat(p)
                    except OSError:
                        continue
                    if not os.path.isfile(p) or os.path.islink(p) or st.st_ino in seen or st.st_size == 0:
                        continue
                    seen.add(st.st_ino)
                    try:
                        tar.add(p, arcname=os.path.relpath(p, "/"))
                    except OSError:
                        continue
                    total += st.st_size
                    if total >= budget:
                        return total
    return total


def build_image(work, app, size_mb):
    """`s3dock build` of an image FROM scratch holding ~size_mb of real files."""
    ctx = Path(work) / app
    ctx.mkdir()
    real = make_rootfs(ctx / "rootfs.tar", size_mb)
    (ctx / "Dockerfile").write_text(f"FROM scratch\nLABEL bench={app}\nADD rootfs.tar /\n")
    env = {
        "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    for args in (["init", "-q"], ["add", "Dockerfile"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", *args], cwd=ctx, check=True, env={**os.environ, **env})
    # rootfs.tar stays untracked: untracked files do not block a build and are in the context.
    out = subprocess.run([S3DOCK, "build", app, "--context", str(ctx)], capture_output=True, text=True, check=True)
    image = out.stdout.strip()
    size = int(subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image],
                              capture_output=True, text=True, check=True).stdout)
    log(f"built {image}: {real / 2**20:.0f} MiB of files, image {size / 2**20:.0f} MiB")
    return image, size


def aws(args):
    return f"{AWS} --endpoint-url {ENDPOINT} {args}"


def main():
    work = tempfile.mkdtemp(prefix="s3dock-bench-")
    bucket = f"s3dock-bench-{int(time.time())}"
    subprocess.run(aws(f"s3 mb s3://{bucket}"), shell=True, check=True, capture_output=True)
    cfg = Path(work) / "config.toml"
    cfg.write_text(
        f'[profiles.default]\nstore = "s3://{bucket}/s3dock"\nendpoint = "{ENDPOINT}"\n'
        f'path_style = true\nregion = "us-east-1"\nevents = "inline"\n'
    )
    env = {"S3DOCK_CONFIG": str(cfg)}
    rows = []
    images = []
    try:
        image, size = build_image(work, "bench", SIZE_MB)
        images.append(image)
        app = image.split(":")[0]
        shell_key = f"s3://{bucket}/shell/{image.replace(':', '-')}.tar.gz"

        # Push: the shell recipe first (it reads the same image), then s3dock, then a re-push.
        rows.append(measure("shell push: docker save | gzip | aws s3 cp -",
                            f"docker save {image} | gzip | " + aws(f"s3 cp - {shell_key}")))
        # The expert recipe: pigz on every core, at the level an expert picks for speed.
        rows.append(measure(EXPERT_PUSH,
                            f"docker save {image} | pigz -p {CORES} -1 | " + aws(f"s3 cp - {shell_key}.pigz")))
        rows.append(measure("s3dock push", f"{S3DOCK} push {image} --json", env))
        push_json = json.loads(rows[-1]["stdout"])
        rows.append(measure("s3dock push (unchanged image: skipped)", f"{S3DOCK} push {image}", env))
        subprocess.run([S3DOCK, "tag", image, "v1.0.0"], env={**os.environ, **env}, check=True, capture_output=True)
        subprocess.run([S3DOCK, "promote", app, "v1.0.0", "production"], env={**os.environ, **env}, check=True,
                       capture_output=True)

        # Pull: each starts without the image.
        subprocess.run(["docker", "rmi", "-f", image], check=True, capture_output=True)
        rows.append(measure("shell pull: aws s3 cp - | gunzip | docker load",
                            aws(f"s3 cp {shell_key} -") + " | gunzip | docker load"))
        subprocess.run(["docker", "rmi", "-f", image], check=True, capture_output=True)
        rows.append(measure(EXPERT_PULL, aws(f"s3 cp {shell_key}.pigz -") + " | pigz -d | docker load"))
        subprocess.run(["docker", "rmi", "-f", image], check=True, capture_output=True)
        rows.append(measure("s3dock pull", f"{S3DOCK} pull {app} production", env))
        rows.append(measure("s3dock pull (image present: skipped)", f"{S3DOCK} pull {app} production", env))

        big = None
        if BIG_MB > 0:
            big_image, big_size = build_image(work, "benchbig", BIG_MB)
            images.append(big_image)
            big_app = big_image.split(":")[0]
            big_push = measure(f"s3dock push, {big_size / 2**30:.2f} GiB image", f"{S3DOCK} push {big_image}", env)
            subprocess.run([S3DOCK, "promote", big_image, "production"], env={**os.environ, **env}, check=True,
                           capture_output=True)
            subprocess.run(["docker", "rmi", "-f", big_image], check=True, capture_output=True)
            big_pull = measure(f"s3dock pull, {big_size / 2**30:.2f} GiB image", f"{S3DOCK} pull {big_app} production", env)
            big = (big_push, big_pull, big_size)

        write_report(rows, size, push_json, big)
    finally:
        for image in images:
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
        subprocess.run(aws(f"s3 rb s3://{bucket} --force"), shell=True, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def machine():
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                            text=True).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Docker engine {docker}, LocalStack 4.13.1 on 127.0.0.1"


def cell(text):
    """A table cell: pipes in shell commands must not split the Markdown row."""
    return text.replace("|", "\\|")


def write_report(rows, size, push_json, big):
    by = {r["name"]: r for r in rows}
    shell_push = by["shell push: docker save | gzip | aws s3 cp -"]
    ours_push = by["s3dock push"]
    shell_pull = by["shell pull: aws s3 cp - | gunzip | docker load"]
    ours_pull = by["s3dock pull"]
    mb = size / 2**20
    lines = [
        "| command | wall s | MB/s of image | CPU s | peak RSS MiB | emulator CPU s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rate = f"{mb / r['wall']:.0f}" if "skipped" not in r["name"] else "-"
        lines.append(f"| {cell(r['name'])} | {r['wall']:.2f} | {rate} | {r['cpu']:.2f} | {r['rss_mb']:.0f} | {r['server']:.1f} |")
    if big:
        bp, bl, bsize = big
        for r in (bp, bl):
            lines.append(f"| {cell(r['name'])} | {r['wall']:.2f} | {bsize / 2**20 / r['wall']:.0f} | {r['cpu']:.2f} | "
                         f"{r['rss_mb']:.0f} | {r['server']:.1f} |")
    ratios = [
        f"- push: s3dock is **{shell_push['wall'] / ours_push['wall']:.1f}x** faster than the shell recipe "
        f"(wall), using {ours_push['cpu'] / max(shell_push['cpu'], 0.01):.2f}x its CPU time.",
        f"- pull: s3dock takes **{ours_pull['wall'] / shell_pull['wall']:.2f}x** the shell recipe's wall time "
        f"(shell {shell_pull['wall']:.1f}s, s3dock {ours_pull['wall']:.1f}s) while also verifying MD5 and SHA-256 before "
        f"the load completes.",
        f"- against the expert recipe (pigz on all {CORES} cores, level 1): push "
        f"**{ours_push['wall'] / by[EXPERT_PUSH]['wall']:.2f}x** its wall time, pull "
        f"**{ours_pull['wall'] / by[EXPERT_PULL]['wall']:.2f}x** (s3dock also hashes and verifies; the expert recipe "
        f"checks nothing but gzip's CRC).",
        f"- archive: {push_json['size'] / 2**20:.0f} MiB compressed from {push_json['tar_bytes'] / 2**20:.0f} MiB "
        f"of `docker save` output.",
        f"- re-push of an unchanged image: {by['s3dock push (unchanged image: skipped)']['wall']:.2f}s; "
        f"pull of a present image: {by['s3dock pull (image present: skipped)']['wall']:.2f}s.",
    ]
    if big:
        bp, bl, bsize = big
        ratios.append(f"- peak RSS with a {bsize / 2**30:.2f} GiB image: push {bp['rss_mb']:.0f} MiB, "
                      f"pull {bl['rss_mb']:.0f} MiB (the {mb:.0f} MiB image: push {ours_push['rss_mb']:.0f} MiB, "
                      f"pull {ours_pull['rss_mb']:.0f} MiB) — bounded by parts and compression blocks in "
                      f"flight, not by the image.")
    skip_push = by["s3dock push (unchanged image: skipped)"]["wall"]
    skip_pull = by["s3dock pull (image present: skipped)"]["wall"]
    speedup = shell_push["wall"] / ours_push["wall"]
    targets = [
        f"- push at least 2x faster than the shell recipe: {speedup:.1f}x — {'met' if speedup >= 2 else 'NOT met'}",
        f"- re-push of an unchanged image and pull of a present image under 1 s: {skip_push:.2f}s and "
        f"{skip_pull:.2f}s — {'met' if max(skip_push, skip_pull) < 1 else 'NOT met'}",
    ]
    if big:
        peak = max(big[0]["rss_mb"], big[1]["rss_mb"])
        targets.append(f"- peak RSS under 200 MB for a {big[2] / 2**30:.2f} GiB image: {peak:.0f} MiB — "
                       f"{'met' if peak * 1.048576 < 200 else 'NOT met'}")
    text = f"""# Benchmarks

`s3dock push` and `s3dock pull` against the classic shell recipe (`gzip`, one core) and the
expert one (`pigz` on every core), on the same machine, the same image and the same S3
endpoint, in one run. Reproduce with:

```sh
tests/bench/run.sh            # BENCH_SIZE_MB=500 BENCH_BIG_MB=1024 by default
```

It starts its own LocalStack on 127.0.0.1, builds the release `s3dock`, builds an image `FROM
scratch` holding about {SIZE_MB} MiB of real files (binaries, libraries and text from `/usr`), and
runs each command once, the image removed from the engine before each pull. CPU is user + system
time of the command and everything it starts; `docker save`/`docker load` work happens in the
Docker daemon and is not counted for either side; the emulator's CPU is in its own column (on a
small machine it competes with the tool for the same cores). Peak RSS is that of the largest
single process of the command.

Machine: {machine()}. Image: {mb:.0f} MiB (`docker image inspect` size).

{chr(10).join(lines)}

{chr(10).join(ratios)}

Targets:

{chr(10).join(targets)}

What the numbers come from: the shell recipe compresses on one core with `gzip -6`; s3dock
compresses in independent 1 MiB gzip members on every core at level 3 (see
[compression.md](compression.md)), hashes MD5 and SHA-256 on the way and uploads 16 MiB parts
four at a time. On a pull both sides are limited by `docker load` and the emulator; s3dock adds
the digests (MD5 about 500 MB/s, SHA-256 about 1.4 GB/s per core) and withholds the end of the
archive from `docker load` until they match.
"""
    # Sections written by other benchmarks (tests/bench/fanout.sh) are kept as they are.
    if REPORT.exists():
        previous = REPORT.read_text()
        at = previous.find("\n## ")
        if at >= 0:
            text += previous[at:]
    REPORT.write_text(text)
    log(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
