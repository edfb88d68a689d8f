#!/usr/bin/env python3
"""Writes the "Cell network" section of docs/BENCHMARKS.md from cell_bench's JSON and pipe_bench's cell cases,
replacing the section if the file has one, else placing it before "## Notes" (or at the end). The rest of the
file is left as it is, so `bench/run_benchmarks.sh --cell-only` refreshes this section alone."""

import argparse
import json
import re
import statistics

MIB, GIB = 1 << 20, 1 << 30
HEADING = "## Cell network (gRPC, issue 14)"

# Targets of issue 14.
SHARE = 0.80        # cell throughput / raw gRPC throughput
RTT_FACTOR = 1.5    # cell round trip / raw gRPC ping-pong
RATE = 20000        # small notifies per second, one way
SITE_PEAK_MIB = 256  # a site relaying 1 GiB

PIPES = [("cell", "pipe.cell (self-hosted, gRPC on TCP loopback)"), ("socket-tcp", "pipe.socket, TCP loopback"),
         ("socket-unix", "pipe.socket, Unix socket"), ("raw-tcp", "raw TCP loopback")]


def size_label(size):
    return f"{size // GIB} GiB" if size >= GIB else f"{size // MIB} MiB" if size >= MIB else f"{size} B"


def met(ok):
    return "met" if ok else "**NOT met**"


def security(tls):
    return "mutual TLS" if tls else "clear text"


# Symbols whose inclusive share tells where a cell's time goes beyond raw gRPC's (perf --children).
KEY_SYMBOLS = [
    ("exc_page_fault", "page faults (fresh memory touched: gRPC's receive buffers, a message's payload)"),
    ("__memmove_avx512_unaligned_erms", "memmove/memcpy (user space copies)"),
    ("__memset_avx512_unaligned_erms", "memset (zero-filling)"),
    ("_copy_to_iter", "kernel copies to user space (socket reads)"),
    ("_copy_from_iter", "kernel copies from user space (socket writes)"),
    ("grpc::GenericDeserialize<grpc::ProtoBufferReader, ember::cell::v1::Packet>",
     "protobuf: parse a received packet out of gRPC's buffers"),
    ("ember::cell::CellImpl::send", "cell: split and encode a message into packets"),
    ("ember::cell::CellImpl::on_frame", "cell: handle a received packet (checks, relay or reassembly)"),
    ("ember::cell::CellImpl::append", "cell: copy a received chunk into the whole message"),
    ("ember::wire::crc32c", "CRC32C of frames"),
    ("ember::cell::CellImpl::stream_into", "cell: hand a received chunk to a streaming sink"),
    ("ember::cell::CellImpl::work", "cell: handler threads"),
]


def perf_rows(path):
    """{symbol: (children %, self %)} from `perf report --children --sort sym -g none --stdio`."""
    rows = {}
    for line in open(path, errors="replace"):
        m = re.match(r"\s*([0-9.]+)%\s+([0-9.]+)%\s+\[[.k]\]\s+(.*\S)", line)
        if m:
            rows.setdefault(m.group(3), (float(m.group(1)), float(m.group(2))))
    return rows


def profile_table(add, profiles):
    """profiles: [(label, path)], each a perf report of cell_bench --side cell or --side raw."""
    data = [(label, perf_rows(path)) for label, path in profiles]
    add("### Where the time goes")
    add("")
    add("`perf record -e cpu-clock --call-graph dwarf` of `cell_bench --quick --no-tls --no-rss --runs 2 --side cell`, then "
        "`--side raw` (1 MiB and 100 MiB messages over one and two hops, the round trips and the rate; the cell's "
        "three cells or the raw sink, relay and client all in one process). Inclusive share of all samples of "
        "each run (a row may contain another):")
    add("")
    add("| Where | " + " | ".join(label for label, _ in data) + " |")
    add("|---|" + "---:|" * len(data))
    for sym, meaning in KEY_SYMBOLS:
        values = []
        for _, rows in data:
            hit = [v for k, v in rows.items() if k == sym or k.startswith(sym + "(")]
            values.append(f"{hit[0][0]:.1f} %" if hit else "-")
        if any(v != "-" for v in values):
            add(f"| {meaning} (`{sym}`) | " + " | ".join(values) + " |")
    add("")
    for label, rows in data:
        top = sorted(rows.items(), key=lambda kv: -kv[1][1])[:10]
        add(f"Top symbols by self time, {label}: " +
            ", ".join(f"`{name[:60]}` {self_:.1f} %" for name, (_, self_) in top) + ".")
        add("")


def throughput_table(add, rows):
    add("| Security | Path | Size | cell MB/s | raw gRPC MB/s | cell / raw | raw, client → server MB/s | "
        "cell, whole-message MB/s | raw, gathering MB/s | cell ms | raw ms | CPU s/GiB cell | raw | cell, whole | "
        "raw, gathering |")
    add("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in rows:
        path = "server → site (1 hop)" if t["hops"] == 1 else "server → site → job (2 hops)"
        add(f"| {security(t['tls'])} | {path} | {size_label(t['size'])} | {t['cell_mb_per_s']:.1f} | "
            f"{t['raw_mb_per_s']:.1f} | {t['share']:.0%} | {t.get('up_mb_per_s', 0):.1f} | "
            f"{t.get('whole_mb_per_s', 0):.1f} | "
            f"{t.get('gather_mb_per_s', 0):.1f} | "
            f"{t['cell_s'] * 1e3:.1f} | {t['raw_s'] * 1e3:.1f} | {t.get('cell_cpu_s_per_gib', 0):.2f} | "
            f"{t.get('raw_cpu_s_per_gib', 0):.2f} | {t.get('whole_cpu_s_per_gib', 0):.2f} | "
            f"{t.get('gather_cpu_s_per_gib', 0):.2f} |")
    add("")


def section(cell, pipes, meta, profile, profiles, thp=None):
    lines = []
    add = lines.append
    add(HEADING)
    add("")
    add("`bench/cell_bench.cpp`: the cell network (kernel/cell) in one process — a server, `site-1` and the job "
        "`site-1.J` under it, linked over gRPC on 127.0.0.1 — beside raw gRPC doing the same work in the same run: "
        "the cell's own proto (`Cell.Connect`, a bidi stream of `Packet{bytes frame}`), the sync API, the cell's "
        "channel arguments (4 MiB + 4 KiB message cap, keepalive, a local subchannel pool) and the same "
        "credentials (kits written with kernel/provision into a temporary folder). Raw throughput goes the cell's "
        "way: the client (as a site, which dials the server) asks with one small packet and the stream's server "
        "writes the message in 4 MiB packets, which the client counts until the last has come; its two-hop path "
        "goes through a relay service that forwards packets as they come. (Runs before 2026-12-07 16:50 measured "
        "raw gRPC the other way, client to server, to a sink acknowledging each whole message; that direction "
        "is shown beside, not judged.) The cell's is a `request()` to a `sink` topic whose "
        "payloads stream into a sink (`Cell::handle_stream`) that counts each frame's bytes as it arrives, as the "
        "raw sink does, and answers with the count from the reader thread (`Dispatch::inline_reader`), timed "
        "until the reply. A streaming sink is what a receiver that moves a payload on uses: pipe.cell (frames "
        "into buffers the session hands back), `cell_node`'s sink (size and CRC), and the daemons of issue 15 "
        "(models to and from disk and jobs). The same messages also go to a `gather` topic whose handler gets "
        "the whole payload (\"cell, whole-message\", not a target). The runs alternate cell and raw, and the order "
        "of the series within each side turns from run to run. Then three "
        "`cell_node` processes (server, site, job) relay 1 GiB from the server to the job, and the peak "
        "resident memory (VmHWM) of each is read while they still run.")
    add("")
    add("| | |")
    add("|---|---|")
    for key, label in [("date", "Date"), ("load", "Load average (1, 5, 15 min)"), ("nproc", "nproc"),
                       ("build", "Build"), ("commit", "Commit"), ("command", "Command")]:
        if key in meta:
            value = f"`{meta[key]}`" if key == "command" else meta[key]
            add(f"| {label} | {value} |")
    add(f"| Runs | {cell.get('runs', '?')} (cell and raw in turn) |")
    add("")

    targets = []
    for t in cell.get("throughput", []):
        if t["size"] < 100 * MIB:
            continue
        path = "server → site" if t["hops"] == 1 else "server → job through its site"
        targets.append((f"{path}, {size_label(t['size'])}, {security(t['tls'])}: ≥ {SHARE:.0%} of raw gRPC",
                        f"{t['share']:.0%} ({t['cell_mb_per_s']:.0f} vs {t['raw_mb_per_s']:.0f} MB/s)",
                        t["share"] >= SHARE))
    for r in cell.get("round_trip", []):
        targets.append((f"16-byte round trip server ↔ site, {security(r['tls'])}: ≤ {RTT_FACTOR}x raw ping-pong",
                        f"{r['ratio']:.2f}x ({r['cell_median_us']:.0f} vs {r['raw_median_us']:.0f} µs, medians)",
                        r["ratio"] <= RTT_FACTOR))
    for r in cell.get("rate", []):
        targets.append((f"16-byte notifies server → site, {security(r['tls'])}: ≥ {RATE:,} messages/s",
                        f"{r['cell_msgs_per_s']:,.0f} /s (raw one-way writes {r['raw_msgs_per_s']:,.0f} /s)",
                        r["cell_msgs_per_s"] >= RATE))
    for r in cell.get("relay_rss", []):
        site = r["site_kib"] / 1024
        targets.append((f"peak RSS of the site relaying {size_label(r['size'])} server → job, {security(r['tls'])}: "
                        f"< {SITE_PEAK_MIB} MiB", f"{site:.1f} MiB", site < SITE_PEAK_MIB))
    missed = sum(1 for *_, ok in targets if not ok)
    add(f"Targets: {len(targets) - missed} of {len(targets)} met (1 MiB messages are shown below, not judged).")
    add("")
    add("| Target | Measured (same run) | |")
    add("|---|---|---|")
    for target, measured, ok in targets:
        add(f"| {target} | {measured} | {met(ok)} |")
    add("")

    add("### Throughput: one message, from `request()` until the receiver's answer (raw: from the small packet "
        "asking for it until its last packet has come)")
    add("")
    add("Median over every timed message of every run (1 MiB: 30 per run after 5 warm-up; 100 MiB: 3 per run "
        "after 1; 1 GiB: 1 per run).")
    add("")
    add("\"cell, whole-message\" sends the same messages to a handler given the whole payload (`Cell::handle`), "
        "and \"raw, gathering\" is a raw sink (client to server) that copies each message into one buffer "
        "reserved whole and freed after it: neither is a target, the pair shows what gathering a message whole costs on either side. CPU "
        "is the user + system time of the whole process (all three ends are in it) per GiB moved, warm-up "
        "included.")
    add("")
    throughput_table(add, cell.get("throughput", []))
    big = [t for t in cell.get("throughput", []) if t["size"] >= 100 * MIB and t.get("gather_cpu_s_per_gib")
           and t.get("whole_cpu_s_per_gib")]
    if big:
        raw_ratios = sorted(t["cell_cpu_s_per_gib"] / t["raw_cpu_s_per_gib"] for t in big)
        whole_ratios = sorted(t["whole_cpu_s_per_gib"] / t["gather_cpu_s_per_gib"] for t in big)
        raw_mid, whole_mid = statistics.median(raw_ratios), statistics.median(whole_ratios)
        add(f"At 100 MiB and 1 GiB the streaming cell spends {raw_mid:.2f}x the CPU per GiB of raw gRPC (median "
            f"of the {len(big)} cases, {raw_ratios[0]:.2f}x to {raw_ratios[-1]:.2f}x), and the whole-message cell "
            f"{whole_mid:.2f}x that of the gathering raw sink ({whole_ratios[0]:.2f}x to {whole_ratios[-1]:.2f}x): "
            "what is left beyond raw gRPC is the cell's own work (framing, a CRC32C per frame, the sender's copy "
            "into a pooled packet, a writer thread per link). On two shared cores the wall-clock figures follow "
            "the CPU figures, with much noise (one 1 GiB message per run).")
        add("")
    if thp:
        add("Diagnosis, not a figure: the same cases (`cell_bench --quick --no-tls`, 100 MiB messages: 1 per run) "
            "with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, so that glibc asks for transparent huge pages on its "
            "large mappings and a fresh buffer takes one page fault per 2 MiB instead of per 4 KiB:")
        add("")
        throughput_table(add, [t for t in thp.get("throughput", []) if t["size"] >= 100 * MIB])
    add("")

    add("### Small messages, server ↔ site")
    add("")
    add("Round trip: a 16-byte `request()` to an `echo` handler, beside a raw ping-pong of one 16-byte packet each "
        "way on a bidi stream (median and p99 over every timed round trip). Rate: `notify()` of 16 bytes back to "
        "back, timed until the site's handler has counted the last one, beside raw writes of 16-byte packets "
        "timed until the sink acknowledges the last (median of the runs).")
    add("")
    add("The `echo` and counting handlers are inline (`Dispatch::inline_reader`): they run on the site's reader "
        "thread, which writes the reply itself, and a caller writes its own small packet when its link has "
        "nothing queued. One thread hand-off is left that raw gRPC's ping-pong does not have: the server's "
        "reader thread receives the reply and hands it to the waiting caller, who watches for it for up to "
        "200 µs before sleeping on a condition variable (kernel/cell/cell.cpp, spin_until_ready; one spinning "
        "caller per two cores), since a futex wake and a context switch take tens of microseconds on this "
        "virtual machine.")
    add("")
    add("| Security | cell round trip µs (p99) | raw µs (p99) | cell / raw | cell notifies/s | raw writes/s |")
    add("|---|---:|---:|---:|---:|---:|")
    rates = {r["tls"]: r for r in cell.get("rate", [])}
    for r in cell.get("round_trip", []):
        q = rates.get(r["tls"], {})
        add(f"| {security(r['tls'])} | {r['cell_median_us']:.1f} ({r['cell_p99_us']:.1f}) | "
            f"{r['raw_median_us']:.1f} ({r['raw_p99_us']:.1f}) | {r['ratio']:.2f}x | "
            f"{q.get('cell_msgs_per_s', 0):,.0f} | {q.get('raw_msgs_per_s', 0):,.0f} |")
    add("")

    if cell.get("relay_rss"):
        add("### Peak resident memory of cell_node processes relaying one message server → site → job")
        add("")
        add("VmHWM from /proc/<pid>/status, read after the job's reply while all three still run. The server "
            "holds the message it sends; the site forwards packets as they come; the job streams what it "
            "receives into a sink that keeps only its size and CRC (`cell_node`'s `sink` topic).")
        add("")
        add("| Security | Size | site MiB | site before the transfer MiB | server MiB | job MiB | seconds |")
        add("|---|---|---:|---:|---:|---:|---:|")
        for r in cell["relay_rss"]:
            add(f"| {security(r['tls'])} | {size_label(r['size'])} | {r['site_kib'] / 1024:.1f} | "
                f"{r['site_idle_kib'] / 1024:.1f} | {r['server_kib'] / 1024:.1f} | {r['job_kib'] / 1024:.1f} | "
                f"{r['seconds']:.2f} |")
        add("")

    if pipes:
        cases = {c["id"]: c for c in pipes.get("cases", [])}
        add("### pipe.cell beside pipe.socket, a trainer on the same host (pipe_bench)")
        add("")
        add("`bench/pipe_bench` with transport `cell`: the session layer over pipe.cell, the job end self-hosted "
            "(its own cell listening on 127.0.0.1, clear text) and the trainer a process of its own; the same "
            f"cases through pipe.socket and a raw TCP socket. Median of {pipes.get('runs', '?')} runs, each a "
            "fresh pair of processes.")
        add("")
        add("| Case | " + " | ".join(label for _, label in PIPES) + " |")
        add("|---|" + "---:|" * len(PIPES))
        for kind, size, label, unit in [("throughput", "1MiB", "1 MiB messages, MB/s", "mb"),
                                        ("throughput", "100MiB", "100 MiB messages, MB/s", "mb"),
                                        ("throughput", "1GiB", "1 GiB message, MB/s", "mb"),
                                        ("latency", "64B", "64-byte round trip, µs (median)", "us"),
                                        ("rate", "64B", "64-byte messages one way, per s", "rate")]:
            row = []
            for transport, _ in PIPES:
                c = cases.get(f"{transport}/{kind}/{size}")
                if not c:
                    row.append("-")
                elif unit == "mb":
                    row.append(f"{c['mb_per_s']:.1f}")
                elif unit == "us":
                    row.append(f"{c['median_us']:.1f}")
                else:
                    row.append(f"{c['msgs_per_s']:,.0f}")
            if any(v != "-" for v in row):
                add(f"| {label} | " + " | ".join(row) + " |")
        big = cases.get("cell/throughput/1GiB")
        if big:
            add("")
            add(f"Peak RSS moving 1 GiB through pipe.cell: {big['near_peak_kib'] / 1024:.1f} MiB job end, "
                f"{big['far_peak_kib'] / 1024:.1f} MiB trainer end.")
        add("")

    if profiles:
        profile_table(add, profiles)
    if profile:
        add(profile.strip())
        add("")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cell", required=True, help="cell_bench --json output")
    parser.add_argument("--cell-thp", help="cell_bench --quick JSON taken with glibc.malloc.hugetlb=1 (diagnosis)")
    parser.add_argument("--pipes", help="pipe_bench --json output (its cell cases and their baselines)")
    parser.add_argument("--profile", help="a Markdown file of notes on profiles, placed at the section's end")
    parser.add_argument("--perf", action="append", default=[],
                        help="LABEL=FILE: `perf report --children --sort sym -g none --stdio` of cell_bench --side")
    parser.add_argument("--output", required=True, help="docs/BENCHMARKS.md: the section is replaced or added")
    parser.add_argument("--meta", action="append", default=[], help="key=value shown in the section's header")
    args = parser.parse_args()
    cell = json.load(open(args.cell))
    pipes = json.load(open(args.pipes)) if args.pipes else None
    profile = open(args.profile).read() if args.profile else ""
    meta = dict(m.split("=", 1) for m in args.meta)
    profiles = [tuple(p.split("=", 1)) for p in args.perf]
    thp = json.load(open(args.cell_thp)) if args.cell_thp else None
    new = "\n".join(section(cell, pipes, meta, profile, profiles, thp)) + "\n"
    try:
        text = open(args.output).read()
    except FileNotFoundError:
        text = "# Benchmarks\n\n"
    start = text.find(HEADING + "\n")
    if start >= 0:
        rest = re.search(r"^## ", text[start + len(HEADING):], re.M)
        end = start + len(HEADING) + rest.start() if rest else len(text)
        text = text[:start] + new + "\n" + text[end:] if rest else text[:start] + new
    else:
        notes = re.search(r"^## Notes$", text, re.M)
        text = text[:notes.start()] + new + "\n" + text[notes.start():] if notes else text.rstrip("\n") + "\n\n" + new
    with open(args.output, "w") as out:
        out.write(text)


if __name__ == "__main__":
    main()
