//! report.md and report.html from a [`Results`]: one document model rendered
//! twice, so both say the same; the HTML adds bar charts as inline SVG and
//! needs nothing from the network. The analysis is written from the
//! measured numbers: every figure and every comparison in it comes from the
//! results, and a sentence whose figures are missing is left out.

use std::fmt::Write as _;

use crate::results::*;

/// A piece of the report.
enum Block {
    H(u8, String),
    P(String),
    List(Vec<String>),
    Table(Vec<String>, Vec<Vec<String>>),
    Code(String),
    Chart(Chart),
}

struct Chart {
    title: String,
    unit: String,
    /// "lower is better" / "higher is better".
    note: &'static str,
    bars: Vec<(String, f64)>,
}

fn f(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `v / base` to two significant figures (the lab's hosts drift more
/// than a third figure would claim).
fn ratio(v: f64, base: f64) -> String {
    if base > 0.0 && v.is_finite() && base.is_finite() && v > 0.0 {
        let r = v / base;
        let magnitude = r.log10().floor() as i32;
        let decimals = (1 - magnitude).max(0) as usize;
        let r = if magnitude >= 2 {
            let step = 10f64.powi(magnitude - 1);
            (r / step).round() * step
        } else {
            r
        };
        format!("{r:.decimals$}×")
    } else if v == 0.0 && base > 0.0 {
        "0×".into()
    } else {
        "–".into()
    }
}

/// The runtime the others are compared with: runc when it has the figure,
/// else the first runtime that has it.
fn baseline(
    r: &Results,
    get: impl Fn(&RuntimeResult) -> Option<f64>,
) -> Option<(&RuntimeResult, f64)> {
    r.runtimes
        .iter()
        .filter(|x| x.name == "runc")
        .chain(r.runtimes.iter())
        .find_map(|x| get(x).map(|v| (x, v)))
}

fn ok(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Metric {
    name: &'static str,
    unit: &'static str,
    lower_better: bool,
    get: fn(&RuntimeResult) -> Option<f64>,
    /// The baseline's figure this one is compared with, when not its own
    /// (a start from the pool against the baseline's plain start).
    vs: Option<fn(&RuntimeResult) -> Option<f64>>,
    /// Drawn as a chart (the medians, not every percentile).
    chart: bool,
}

const METRICS: &[Metric] = &[
    Metric {
        name: "start, median",
        unit: "ms",
        lower_better: true,
        get: |r| r.startup_ms.map(|s| s.median),
        vs: None,
        chart: true,
    },
    Metric {
        name: "start, p95",
        unit: "ms",
        lower_better: true,
        get: |r| r.startup_ms.map(|s| s.p95),
        vs: None,
        chart: false,
    },
    Metric {
        name: "start, min",
        unit: "ms",
        lower_better: true,
        get: |r| r.startup_ms.map(|s| s.min),
        vs: None,
        chart: false,
    },
    Metric {
        name: "start, max",
        unit: "ms",
        lower_better: true,
        get: |r| r.startup_ms.map(|s| s.max),
        vs: None,
        chart: false,
    },
    Metric {
        name: "start from a ready VM (pool), median",
        unit: "ms",
        lower_better: true,
        get: |r| r.startup_pool_ms.map(|s| s.median),
        vs: Some(|r| r.startup_ms.map(|s| s.median)),
        chart: true,
    },
    Metric {
        name: "start from a ready VM (pool), p95",
        unit: "ms",
        lower_better: true,
        get: |r| r.startup_pool_ms.map(|s| s.p95),
        vs: Some(|r| r.startup_ms.map(|s| s.p95)),
        chart: false,
    },
    Metric {
        name: "HTTP throughput",
        unit: "req/s",
        lower_better: false,
        get: |r| r.http.as_ref().map(|h| h.rps),
        vs: None,
        chart: true,
    },
    Metric {
        name: "HTTP latency p50",
        unit: "ms",
        lower_better: true,
        get: |r| r.http.as_ref().map(|h| h.p50_ms),
        vs: None,
        chart: true,
    },
    Metric {
        name: "HTTP latency p95",
        unit: "ms",
        lower_better: true,
        get: |r| r.http.as_ref().map(|h| h.p95_ms),
        vs: None,
        chart: false,
    },
    Metric {
        name: "HTTP latency p99",
        unit: "ms",
        lower_better: true,
        get: |r| r.http.as_ref().map(|h| h.p99_ms),
        vs: None,
        chart: false,
    },
    Metric {
        name: "CPU loop",
        unit: "s",
        lower_better: true,
        get: |r| r.cpu.as_ref().map(|c| c.seconds),
        vs: None,
        chart: true,
    },
    Metric {
        name: "host memory (PSS), idle",
        unit: "MiB",
        lower_better: true,
        get: |r| r.memory_pss_kib.map(mib),
        vs: None,
        chart: true,
    },
    Metric {
        name: "file write (fsync)",
        unit: "MiB/s",
        lower_better: false,
        get: |r| r.file_io.as_ref().map(|x| x.write_mib_s),
        vs: None,
        chart: true,
    },
    Metric {
        name: "file re-read",
        unit: "MiB/s",
        lower_better: false,
        get: |r| r.file_io.as_ref().map(|x| x.read_mib_s),
        vs: None,
        chart: true,
    },
];

fn document(r: &Results) -> Vec<Block> {
    let mut d = Vec::new();
    let h = &r.host;
    d.push(Block::H(
        1,
        "scute lab: runc and VM-isolated containers side by side".into(),
    ));
    d.push(Block::P(format!(
        "Generated {} by `{}` (scute {}). Host: {}, {} CPUs, {} MiB RAM, kernel `{}`. \
         scute's acceleration on this host: **{}** ({}){}.",
        r.generated_at,
        r.command,
        r.scute_version,
        h.cpu_model,
        h.cpus,
        h.memory_mib,
        h.kernel,
        h.accel,
        h.accel_reason,
        if h.accel_settings.is_empty() {
            String::new()
        } else {
            format!("; settings in force: `{}`", h.accel_settings)
        }
    )));
    summary(r, &mut d);
    setup(r, &mut d);
    if r.options
        .only
        .iter()
        .any(|s| s == "workload" || s == "performance")
    {
        workload(r, &mut d);
    }
    if r.options.only.iter().any(|s| s == "isolation") {
        isolation(r, &mut d);
    }
    if r.options.only.iter().any(|s| s == "performance") {
        performance(r, &mut d);
    }
    d.push(Block::H(2, "Analysis".into()));
    for p in analysis(r) {
        d.push(Block::P(p));
    }
    commands(r, &mut d);
    d
}

fn summary(r: &Results, d: &mut Vec<Block>) {
    d.push(Block::H(2, "Summary".into()));
    let rows = r
        .runtimes
        .iter()
        .map(|rt| {
            let esc = counts(rt.probes.iter().filter(|p| is_escape(p)));
            let info = counts(rt.probes.iter().filter(|p| !is_escape(p)));
            let cell = |(i, e, n): (usize, usize, usize)| {
                if rt.probes.is_empty() {
                    "–".into()
                } else {
                    format!("{i} / {e} / {n}")
                }
            };
            vec![
                rt.name.clone(),
                if rt.available {
                    "yes".into()
                } else {
                    format!("no: {}", rt.unavailable_reason.as_deref().unwrap_or(""))
                },
                rt.kernel.clone().unwrap_or_else(|| "–".into()),
                match (rt.startup_ms, rt.startup_pool_ms) {
                    (Some(s), Some(p)) => format!("{} ms (pool: {} ms)", f(s.median), f(p.median)),
                    (Some(s), None) => format!("{} ms", f(s.median)),
                    _ => "–".into(),
                },
                // The workload's own start: what a user of the app feels.
                rt.workload
                    .as_ref()
                    .and_then(|w| w.ready_ms)
                    .map_or("–".into(), |ms| format!("{} s", f(ms / 1000.0))),
                rt.http.as_ref().map_or("–".into(), |x| f(x.rps)),
                rt.memory_pss_kib
                    .map_or("–".into(), |k| format!("{} MiB", f(mib(k)))),
                cell(esc),
                cell(info),
            ]
        })
        .collect();
    d.push(Block::Table(
        [
            "runtime",
            "available",
            "kernel",
            "start (median)",
            "workload ready",
            "HTTP req/s",
            "memory (PSS)",
            "escapes held / got through / n.a.",
            "host information hidden / exposed / n.a.",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    ));
    let errs: Vec<String> = r
        .runtimes
        .iter()
        .flat_map(|rt| rt.errors.iter().map(move |e| format!("{}: {e}", rt.name)))
        .collect();
    if !errs.is_empty() {
        d.push(Block::P("What failed (the run went on):".into()));
        d.push(Block::List(errs));
    }
}

fn engine_title(engine: &str) -> &str {
    match engine {
        "docker" => "Docker",
        "podman" => "Podman",
        e => e,
    }
}

/// containerd and scute's entry in its config.
fn containerd_setup(s: &Setup, d: &mut Vec<Block>) {
    d.push(Block::P(format!(
        "containerd {} at `{}`.",
        s.containerd_version.as_deref().unwrap_or("(not reachable)"),
        s.containerd_address
    )));
    match &s.runtime_entry {
        Some(e) => {
            d.push(Block::P(format!(
                "scute's runtime entry in `{}`:",
                s.containerd_config
            )));
            d.push(Block::Code(e.clone()));
        }
        None => d.push(Block::P(format!(
            "`{}` has no scute runtime entry (`scute install` adds it); \
             `ctr --runtime io.containerd.scute.v2` still finds the shim on PATH.",
            s.containerd_config
        ))),
    }
}

/// What CPUs each runtime's containers had: the same quota for all with
/// `--cpus`, else whatever each gives by default.
fn cpus_note(r: &Results) -> String {
    match r.options.cpus {
        Some(c) => format!(
            "CPUs: every container ran with `--cpus {c}` (runc: a CFS quota of {c} CPUs; \
             scute: a VM of at least {} vCPUs, within its `max_vcpus`; \"CPUs seen\" in the \
             workload table).",
            c.ceil()
        ),
        None => format!(
            "CPUs: no limit given, so runc's containers may use all {} of the host's CPUs and a \
             VM runtime's only its VM's vCPUs (\"CPUs seen\" in the workload table); \
             `scute lab --cpus N` gives every runtime's containers the same.",
            r.host.cpus
        ),
    }
}

fn setup(r: &Results, d: &mut Vec<Block>) {
    let s = &r.setup;
    d.push(Block::H(2, "1. Setup".into()));
    if s.engine != "containerd" {
        d.push(Block::P(format!(
            "Engine: {} {}: every container was started with `{} run --runtime …`.",
            engine_title(&s.engine),
            s.engine_version.as_deref().unwrap_or("(version unknown)"),
            s.engine
        )));
        match &s.runtime_entry {
            Some(e) => {
                d.push(Block::P(format!(
                    "scute as {} knows it:",
                    engine_title(&s.engine)
                )));
                d.push(Block::Code(e.clone()));
            }
            None => d.push(Block::P(format!(
                "{} does not know scute (`scute install --{}` registers scute-runc).",
                engine_title(&s.engine),
                s.engine
            ))),
        }
    } else {
        containerd_setup(s, d);
    }
    d.push(Block::P(cpus_note(r)));
    d.push(Block::P(format!(
        "`scute check`: **{}**.",
        if s.check_ok {
            "scute can run on this host"
        } else {
            "some checks failed"
        }
    )));
    d.push(Block::Table(
        vec!["check".into(), "ok".into(), "detail".into()],
        s.check
            .iter()
            .map(|c| vec![c.name.clone(), ok(c.ok).into(), c.detail.clone()])
            .collect(),
    ));
    d.push(Block::H(3, "Runtimes and their smoke runs".into()));
    d.push(Block::Table(
        [
            "runtime",
            if r.setup.engine == "containerd" {
                "containerd runtime"
            } else {
                "engine's runtime"
            },
            "binary",
            "version",
            "smoke run",
        ]
        .map(String::from)
        .to_vec(),
        r.runtimes
            .iter()
            .map(|rt| {
                vec![
                    rt.name.clone(),
                    format!("`{}`", rt.runtime_type),
                    rt.binary
                        .clone()
                        .map_or("not found".into(), |b| format!("`{b}`")),
                    rt.version.clone().unwrap_or_else(|| "–".into()),
                    match (&rt.smoke, rt.available) {
                        (Some(s), true) => format!("exit {}", s.exit_code),
                        (Some(s), false) => format!("failed (exit {})", s.exit_code),
                        (None, _) => rt
                            .unavailable_reason
                            .clone()
                            .unwrap_or_else(|| "not run".into()),
                    },
                ]
            })
            .collect(),
    ));
    for rt in &r.runtimes {
        if let Some(s) = &rt.smoke {
            d.push(Block::P(format!("{}: `{}`", rt.name, s.command)));
            d.push(Block::Code(s.output.clone()));
        }
    }
}

fn workload(r: &Results, d: &mut Vec<Block>) {
    let h = &r.host;
    d.push(Block::H(
        2,
        "2. The same workload under each runtime".into(),
    ));
    d.push(Block::P(format!(
        "`{}` started detached (`ctr run -d`) in a CNI network namespace (bridge + portmap), \
         its port {} published on 127.0.0.1; health check: GET / through the published port.",
        r.options.image, r.options.port
    )));
    let mut rows = vec![vec![
        "host".into(),
        "–".into(),
        "–".into(),
        format!("`{}`", h.kernel),
        h.cpu_model.clone(),
        h.cpus.to_string(),
    ]];
    for rt in r.runtimes.iter().filter(|x| x.available) {
        rows.push(vec![
            rt.name.clone(),
            rt.workload
                .as_ref()
                .map_or("–".into(), |w| match w.health_status {
                    Some(s) => format!("HTTP {s} on 127.0.0.1:{}", w.host_port),
                    None => format!("no answer on 127.0.0.1:{}", w.host_port),
                }),
            rt.workload
                .as_ref()
                .and_then(|w| w.ready_ms)
                .map_or("–".into(), |m| format!("{} ms", f(m))),
            rt.kernel.clone().map_or("–".into(), |k| {
                if k == h.kernel {
                    format!("`{k}` (the host's)")
                } else {
                    format!("`{k}` (its own)")
                }
            }),
            rt.cpu_model.clone().unwrap_or_else(|| "–".into()),
            rt.cpus_seen.map_or("–".into(), |n| n.to_string()),
        ]);
    }
    d.push(Block::Table(
        [
            "",
            "health check",
            "ready after",
            "kernel (uname -r)",
            "CPU model",
            "CPUs seen",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    ));
    let mut versions = format!("host:  {}", h.proc_version);
    for rt in r.runtimes.iter().filter(|x| x.available) {
        if let Some(v) = &rt.proc_version {
            let _ = write!(versions, "\n{:<6} {v}", format!("{}:", rt.name));
        }
    }
    d.push(Block::P(
        "/proc/version, host and inside each runtime:".into(),
    ));
    d.push(Block::Code(versions));
}

fn isolation(r: &Results, d: &mut Vec<Block>) {
    d.push(Block::H(2, "3. Isolation".into()));
    let rts: Vec<&RuntimeResult> = r.runtimes.iter().filter(|x| !x.probes.is_empty()).collect();
    d.push(Block::P(
        "Each probe ran in an ordinary container, and the escapes in a `--privileged` one, \
         under every runtime. *isolated*: the container cannot see or reach the host's resource; \
         *exposed*: it can. Whose kernel a container talks to is told by the kernel's boot_id. \
         Under a runtime that shares the host's kernel the escapes stop at proving the door is \
         open; they write only into a guest kernel, and the host then checks its own state."
            .into(),
    ));
    let mut ids: Vec<(&str, &str)> = Vec::new();
    for rt in &rts {
        for p in &rt.probes {
            if !ids.iter().any(|(i, _)| *i == p.id) {
                ids.push((&p.id, &p.title));
            }
        }
    }
    let mut head = vec!["probe".to_owned()];
    head.extend(rts.iter().map(|x| x.name.clone()));
    d.push(Block::Table(
        head,
        ids.iter()
            .map(|(id, title)| {
                let mut row = vec![format!("{title} (`{id}`)")];
                row.extend(rts.iter().map(|rt| {
                    rt.probe(id)
                        .map_or("–".into(), |p| format!("**{}**", p.verdict.as_str()))
                }));
                row
            })
            .collect(),
    ));
    for (id, title) in &ids {
        d.push(Block::H(3, format!("{title} (`{id}`)")));
        for rt in &rts {
            if let Some(p) = rt.probe(id) {
                d.push(Block::P(format!(
                    "**{}: {}**: {} (raw: `{}`)",
                    rt.name,
                    p.verdict.as_str(),
                    p.reason,
                    p.raw
                )));
                if !p.evidence.is_empty() {
                    d.push(Block::Code(p.evidence.clone()));
                }
            }
        }
    }
}

fn performance(r: &Results, d: &mut Vec<Block>) {
    d.push(Block::H(2, "4. Performance".into()));
    let o = &r.options;
    let cpu_task = r
        .runtimes
        .iter()
        .find_map(|x| x.cpu.as_ref().map(|c| c.task.clone()))
        .unwrap_or_else(|| "a fixed compute loop".into());
    let io_mib = r
        .runtimes
        .iter()
        .find_map(|x| x.file_io.as_ref().map(|f| f.mib))
        .unwrap_or(0);
    d.push(Block::P(format!(
        "All figures from this run, on this host. Start: wall time of `ctr run --rm IMAGE ID true`, \
         {} runs per runtime. HTTP: wrk -t1 -c{} -d{}s through the published port{}. CPU: {cpu_task}, \
         timed inside the container. Memory: PSS of every host process one idle container needs \
         (shim, VMM, virtiofsd, the container's processes). File I/O: {io_mib} MiB written with fsync \
         in the container's rootfs, then re-read for at least half a second. Ratios are to {}.",
        o.runs,
        o.http_connections,
        o.http_seconds,
        if o.http_warmup_seconds > 0 {
            format!(
                ", after {} s of the same load not counted (a JIT-compiled server speeds up over its first requests)",
                o.http_warmup_seconds
            )
        } else {
            String::new()
        },
        baseline(r, |x| x.startup_ms.map(|s| s.median)).map_or("runc".into(), |b| b.0.name.clone())
    )));
    let rts: Vec<&RuntimeResult> = r.runtimes.iter().filter(|x| x.available).collect();
    let mut head = vec!["metric".to_owned()];
    head.extend(rts.iter().map(|x| x.name.clone()));
    let mut rows = Vec::new();
    for m in METRICS {
        if baseline(r, m.get).is_none() {
            continue;
        }
        let base = baseline(r, m.vs.unwrap_or(m.get));
        let mut row = vec![format!("{} ({})", m.name, m.unit)];
        for rt in &rts {
            row.push(match ((m.get)(rt), base) {
                (Some(v), Some((b, bv))) if b.name != rt.name => {
                    format!("{} ({})", f(v), ratio(v, bv))
                }
                (Some(v), _) => f(v),
                (None, _) => "–".into(),
            });
        }
        rows.push(row);
    }
    d.push(Block::Table(head, rows));
    for m in METRICS.iter().filter(|m| m.chart) {
        let bars: Vec<(String, f64)> = rts
            .iter()
            .filter_map(|rt| (m.get)(rt).map(|v| (rt.name.clone(), v)))
            .collect();
        if !bars.is_empty() {
            d.push(Block::Chart(Chart {
                title: m.name.into(),
                unit: m.unit.into(),
                note: if m.lower_better {
                    "lower is better"
                } else {
                    "higher is better"
                },
                bars,
            }));
        }
    }
}

/// Whether `rt` runs on a kernel of its own: its kernel probe, else its
/// `uname -r` against the host's.
fn own_kernel(r: &Results, rt: &RuntimeResult) -> bool {
    match rt.probe("kernel") {
        Some(p) => p.verdict == Verdict::Isolated,
        None => rt.kernel.as_deref().is_some_and(|k| k != r.host.kernel),
    }
}

/// The analysis, one paragraph per topic, from the numbers.
/// The report's analysis: one paragraph (or none) per topic, in order.
const TOPICS: &[fn(&Results) -> Vec<String>] = &[
    startup,
    runtime_overhead,
    cpu_and_io,
    memory,
    isolation_summary,
    when_to_use_which,
    not_compared,
];

pub fn analysis(r: &Results) -> Vec<String> {
    TOPICS.iter().flat_map(|topic| topic(r)).collect()
}

/// (runtime, its value, the baseline's value, the baseline's name) for
/// every runtime but the baseline that has a `get` figure.
fn others(
    r: &Results,
    get: fn(&RuntimeResult) -> Option<f64>,
) -> Vec<(&RuntimeResult, f64, f64, String)> {
    match baseline(r, get) {
        Some((b, bv)) => r
            .runtimes
            .iter()
            .filter(|x| x.name != b.name)
            .filter_map(|x| get(x).map(|v| (x, v, bv, b.name.clone())))
            .collect(),
        None => Vec::new(),
    }
}

/// Probes that try a way out to the host (as opposed to ones that show
/// what the container can see of it: information exposure).
fn is_escape(p: &Probe) -> bool {
    p.id.starts_with("escape-")
}

/// (isolated, exposed, not applicable) among `probes`.
fn counts<'a>(probes: impl Iterator<Item = &'a Probe>) -> (usize, usize, usize) {
    let (mut i, mut e, mut n) = (0, 0, 0);
    for p in probes {
        match p.verdict {
            Verdict::Isolated => i += 1,
            Verdict::Exposed => e += 1,
            Verdict::NotApplicable => n += 1,
        }
    }
    (i, e, n)
}

/// Probes whose verdict is not the same under every probed runtime, with
/// each runtime's verdict.
fn differing<'a>(probed: &[&'a RuntimeResult]) -> Vec<(&'a str, Vec<(&'a str, Verdict)>)> {
    let mut ids: Vec<&str> = Vec::new();
    for rt in probed {
        for p in &rt.probes {
            if !ids.contains(&p.id.as_str()) {
                ids.push(&p.id);
            }
        }
    }
    ids.into_iter()
        .filter_map(|id| {
            let v: Vec<(&str, Verdict)> = probed
                .iter()
                .filter_map(|rt| rt.probe(id).map(|p| (rt.name.as_str(), p.verdict)))
                .collect();
            (v.windows(2).any(|w| w[0].1 != w[1].1)).then_some((id, v))
        })
        .collect()
}

/// A runtime's escape probes.
fn escapes(rt: &RuntimeResult) -> Vec<&Probe> {
    rt.probes.iter().filter(|p| is_escape(p)).collect()
}

/// Runtimes the probes ran on.
fn probed(r: &Results) -> Vec<&RuntimeResult> {
    r.runtimes.iter().filter(|x| !x.probes.is_empty()).collect()
}

/// Start time against the baseline, and why a VM pays it.
fn startup(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let tcg = r.host.accel == "tcg";
    let mut s = String::new();
    for (rt, v, bv, b) in others(r, |x| x.startup_ms.map(|s| s.median)) {
        let st = rt.startup_ms.expect("has startup");
        let _ = write!(
            s,
            "{} starts a container in {} ms (median of {} runs, p95 {} ms), {} {}'s {} ms{}. ",
            rt.name,
            f(v),
            st.runs,
            f(st.p95),
            ratio(v, bv),
            b,
            f(bv),
            if own_kernel(r, rt) {
                ": it boots a kernel of its own before the container's first instruction"
            } else {
                ""
            }
        );
        if let Some(p) = rt.startup_pool_ms {
            let _ = write!(
                s,
                "With a VM its pool booted ahead of time, {} starts one in {} ms (median, p95 {} ms), {} {}'s: the boot is off the start path, the guest's container setup is not. ",
                rt.name,
                f(p.median),
                f(p.p95),
                ratio(p.median, bv),
                b
            );
        }
    }
    if let Some((b, _)) = baseline(r, |x| x.startup_ms.map(|s| s.median)) {
        if let Some(st) = b.startup_ms.filter(|st| st.median > 0.0 && !s.is_empty()) {
            let _ = write!(
                s,
                "Ratios are given to two figures: {}'s p95 is {:.0} % above its median in this run, \
                 so smaller differences are within the noise. ",
                b.name,
                (st.p95 / st.median - 1.0) * 100.0
            );
        }
    }
    if !s.is_empty() {
        s.insert_str(0, "**Startup overhead.** ");
        let vm_measured = r
            .runtimes
            .iter()
            .any(|x| x.kind == RuntimeKind::Vm && x.startup_ms.is_some());
        if vm_measured && tcg {
            s.push_str(&format!(
                "This host has no usable hardware virtualization ({}), so scute runs its VMs under \
                 QEMU's TCG, which translates every guest instruction: the guest kernel boots \
                 under emulation.",
                r.host.accel_reason
            ));
        } else if vm_measured {
            s.push_str(&format!(
                "scute runs its VMs with {} here ({}).",
                r.host.accel, r.host.accel_reason
            ));
        }
        out.push(s);
    }
    out
}

/// The HTTP workload through the published port.
fn runtime_overhead(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let mut s = String::new();
    for (rt, v, bv, b) in others(r, |x| x.http.as_ref().map(|h| h.rps)) {
        let h = rt.http.as_ref().expect("has http");
        let bh = r
            .runtimes
            .iter()
            .find(|x| x.name == b)
            .and_then(|x| x.http.as_ref());
        let _ = write!(
            s,
            "Through the published port, {} served {} req/s against {}'s {} ({}), \
             with p50 latency {} ms{}. ",
            rt.name,
            f(v),
            b,
            f(bv),
            ratio(v, bv),
            f(h.p50_ms),
            bh.map(|x| format!(
                " against {} ms ({})",
                f(x.p50_ms),
                ratio(h.p50_ms, x.p50_ms)
            ))
            .unwrap_or_default()
        );
    }
    if !s.is_empty() {
        out.push(format!("**Runtime overhead.** {}", s.trim_end()));
    }
    out
}

/// The CPU loop and file I/O on the rootfs.
fn cpu_and_io(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let tcg = r.host.accel == "tcg";
    let mut s = String::new();
    for (rt, v, bv, b) in others(r, |x| x.cpu.as_ref().map(|c| c.seconds)) {
        let r_ = v / bv;
        let _ = write!(
            s,
            "The CPU loop took {} s under {} and {} s under {} ({}): ",
            f(v),
            rt.name,
            f(bv),
            b,
            ratio(v, bv)
        );
        s.push_str(if r_ < 1.3 {
            "compute-bound code runs at near-native speed. "
        } else if tcg && rt.kind == RuntimeKind::Vm {
            "the guest's CPU is emulated by TCG here; under KVM guest code runs natively, so rerun the lab on a KVM host to see the gap without emulation. "
        } else if rt.kind == RuntimeKind::Vm {
            "more than expected under KVM; check for CPU contention or a missing CPU feature in the guest. "
        } else {
            "the difference is this runtime's own. "
        });
    }
    for (rt, v, bv, b) in others(r, |x| x.file_io.as_ref().map(|f| f.write_mib_s)) {
        let fi = rt.file_io.as_ref().expect("has io");
        let _ = write!(
            s,
            "Writing to the rootfs ran at {} MiB/s under {} against {} MiB/s under {} ({}), re-reading at {} MiB/s{}. ",
            f(v),
            rt.name,
            f(bv),
            b,
            ratio(v, bv),
            f(fi.read_mib_s),
            if rt.name == "scute" {
                ": writes cross virtio-fs to virtiofsd on the host, while a re-read comes from the guest's page cache (the root filesystems' share is cached in the guest, `cache=always`), at the speed of the guest's own memory"
            } else {
                ""
            }
        );
    }
    if !s.is_empty() {
        out.push(format!("**CPU and I/O overhead.** {}", s.trim_end()));
    }
    out
}

/// Host memory (PSS) of one idle container.
fn memory(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let tcg = r.host.accel == "tcg";
    let mut s = String::new();
    for (rt, v, bv, b) in others(r, |x| x.memory_pss_kib.map(mib)) {
        let _ = write!(
            s,
            "One idle {} container costs the host {} MiB (PSS of {}) against {} MiB for {} ({}). ",
            rt.name,
            f(v),
            rt.memory_processes.join(", "),
            f(bv),
            b,
            ratio(v, bv)
        );
        if rt.memory_processes.iter().any(|p| p.starts_with("qemu")) {
            s.push_str("A VM sandbox pays for a guest kernel, its page cache and the VMM");
            s.push_str(if tcg {
                ", and under TCG also for the translated-code cache. "
            } else {
                ". "
            });
        }
    }
    if !s.is_empty() {
        out.push(format!("**Memory overhead.** {}", s.trim_end()));
    }
    out
}

/// Escapes and information exposure counted apart per runtime, the
/// probes that differ between runtimes, and whose kernel the container
/// talks to.
fn isolation_summary(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let probed = probed(r);
    if !probed.is_empty() {
        let mut s = String::from("**Isolation.** ");
        for rt in &probed {
            let (ei, ee, en) = counts(rt.probes.iter().filter(|p| is_escape(p)));
            let (ii, ie, _) = counts(rt.probes.iter().filter(|p| !is_escape(p)));
            let _ = write!(
                s,
                "{}: {ei} of {} escape attempts held{}{}; of the host's information, {ii} kinds hidden and {ie} exposed. ",
                rt.name,
                ei + ee + en,
                if ee > 0 {
                    format!(", {ee} got through")
                } else {
                    String::new()
                },
                if en > 0 {
                    format!(" ({en} not applicable)")
                } else {
                    String::new()
                },
            );
        }
        let diff = differing(&probed);
        if probed.len() > 1 {
            if diff.is_empty() {
                s.push_str("No probe came out differently between the runtimes. ");
            } else {
                let named: Vec<String> = diff
                    .iter()
                    .map(|(id, v)| {
                        let each: Vec<String> = v
                            .iter()
                            .map(|(rt, verdict)| format!("{rt} {}", verdict_word(*verdict)))
                            .collect();
                        format!("`{id}` ({})", each.join(", "))
                    })
                    .collect();
                let _ = write!(
                    s,
                    "{} probes came out differently: {}. ",
                    diff.len(),
                    named.join("; ")
                );
            }
        }
        let shared: Vec<&str> = probed
            .iter()
            .filter(|rt| {
                rt.probe("kernel")
                    .is_some_and(|p| p.verdict == Verdict::Exposed)
            })
            .map(|rt| rt.name.as_str())
            .collect();
        let own: Vec<&str> = probed
            .iter()
            .filter(|rt| {
                rt.probe("kernel")
                    .is_some_and(|p| p.verdict == Verdict::Isolated)
            })
            .map(|rt| rt.name.as_str())
            .collect();
        if !shared.is_empty() {
            let _ = write!(
                s,
                "Under {} the container shares the host's kernel: namespaces, capabilities and seccomp hide \
                 and deny, but one kernel bug or one `--privileged` gives the host away. ",
                shared.join(", ")
            );
        }
        if !own.is_empty() {
            let _ = write!(
                s,
                "Under {} the container talks to a kernel of its own, not the host's: to reach the host an \
                 attacker must break out of that kernel and then out of what runs it on the host{}. ",
                own.join(", "),
                if own.contains(&"scute") {
                    " (for scute: QEMU, as a jailed uid of its own, or virtiofsd, which runs as host root in \
                     a sandbox of its own: see docs/security.md)"
                } else {
                    ""
                }
            );
            let full: Vec<&str> = probed
                .iter()
                .filter(|rt| own.contains(&rt.name.as_str()))
                .filter(|rt| {
                    rt.probe("privileged-capabilities")
                        .is_some_and(|p| p.reason.starts_with("CAP_SYS_ADMIN"))
                })
                .map(|rt| rt.name.as_str())
                .collect();
            if !full.is_empty() {
                let _ = write!(
                    s,
                    "A `--privileged` container under {} holds CAP_SYS_ADMIN over that kernel, so it controls \
                     the kernel completely and the boundary left is the one around it.",
                    full.join(", ")
                );
            }
        }
        out.push(s.trim_end().to_owned());
    }
    out
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Isolated => "isolated",
        Verdict::Exposed => "exposed",
        Verdict::NotApplicable => "n.a.",
    }
}

/// Which runtime for what, when the escape probes split them.
fn when_to_use_which(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let tcg = r.host.accel == "tcg";
    let probed = probed(r);

    let escapes_held = |rt: &RuntimeResult| {
        let esc = escapes(rt);
        !esc.is_empty() && esc.iter().all(|p| p.verdict == Verdict::Isolated)
    };
    let escapes_failed =
        |rt: &RuntimeResult| escapes(rt).iter().any(|p| p.verdict == Verdict::Exposed);
    let strong: Vec<&RuntimeResult> = probed
        .iter()
        .copied()
        .filter(|rt| escapes_held(rt))
        .collect();
    let weak: Vec<&RuntimeResult> = probed
        .iter()
        .copied()
        .filter(|rt| escapes_failed(rt))
        .collect();
    if !strong.is_empty() && !weak.is_empty() {
        let w = weak[0];
        // The escapes that tell the runtimes apart: held under the strong
        // one, through under the weak one (not those n.a. under either).
        let telling: Vec<&str> = escapes(strong[0])
            .iter()
            .filter(|p| {
                w.probe(&p.id)
                    .is_some_and(|q| q.verdict == Verdict::Exposed)
            })
            .map(|p| p.id.as_str())
            .collect();
        let mut s = format!(
            "**When to use which.** Use {} for code you do not trust, for tenants who must not see each other, \
             and for anything that asks for `--privileged`: of the escapes the probes tried, {} got through \
             under {} and were held by {} ({}). \
             They try known ways out of a container's configuration; they do not try an exploit of the \
             guest kernel, QEMU or virtiofsd, which is what would be left to break: a QEMU escape gives \
             an unprivileged, seccomp-filtered uid of its own, a virtiofsd escape root in virtiofsd's \
             sandbox (docs/security.md){}. ",
            strong.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(" or "),
            telling.len(),
            w.name,
            strong.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(" and "),
            telling.join(", "),
            if tcg {
                "; under TCG the boundary around the guest is QEMU's instruction emulator, \
                 not the CPU's virtualization"
            } else {
                ""
            }
        );
        let costs: Vec<String> = strong
            .iter()
            .filter_map(|st| {
                let mut parts = Vec::new();
                if let (Some(a), Some(b)) = (st.startup_ms, w.startup_ms) {
                    parts.push(format!("{} the start time", ratio(a.median, b.median)));
                }
                if let (Some(a), Some(b)) = (st.memory_pss_kib, w.memory_pss_kib) {
                    parts.push(format!("{} the memory", ratio(a as f64, b as f64)));
                }
                (!parts.is_empty())
                    .then(|| format!("{} costs {} of {}", st.name, parts.join(" and "), w.name))
            })
            .collect();
        let _ = write!(
            s,
            "Use {} for trusted code where start time and density matter{}.",
            weak.iter()
                .map(|x| x.name.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
            if costs.is_empty() {
                String::new()
            } else {
                format!(": on this host {}", costs.join("; "))
            }
        );
        if tcg {
            s.push_str(" These costs were measured under TCG, where emulation dominates them; rerun the lab on a host with KVM before deciding.");
        }
        out.push(s);
    }
    out
}

/// Runtimes the lab could not run.
fn not_compared(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let missing: Vec<String> = r
        .runtimes
        .iter()
        .filter(|x| !x.available)
        .map(|x| {
            format!(
                "{} ({})",
                x.name,
                x.unavailable_reason.as_deref().unwrap_or("not available")
            )
        })
        .collect();
    if !missing.is_empty() {
        out.push(format!("Not compared: {}.", missing.join("; ")));
    }
    out
}

fn commands(r: &Results, d: &mut Vec<Block>) {
    d.push(Block::H(2, "Commands".into()));
    let omitted = if r.setup.engine == "containerd" {
        format!(" (`ctr --address {}` omitted)", r.setup.containerd_address)
    } else {
        String::new()
    };
    d.push(Block::P(format!(
        "Every command the lab ran, per runtime{omitted}. Raw output of each \
         probe and run is in `raw/`."
    )));
    for rt in r.runtimes.iter().filter(|x| !x.commands.is_empty()) {
        d.push(Block::H(3, rt.name.clone()));
        d.push(Block::Code(rt.commands.join("\n")));
    }
}

// ---- Markdown ----

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "<br>")
}

pub fn markdown(r: &Results) -> String {
    render_md(document(r))
}

/// The summary table, for the terminal.
pub fn summary_text(r: &Results) -> String {
    let mut d = Vec::new();
    summary(r, &mut d);
    render_md(d.into_iter().skip(1).collect())
}

fn render_md(blocks: Vec<Block>) -> String {
    let mut s = String::new();
    for b in blocks {
        match b {
            Block::H(n, t) => {
                let _ = writeln!(s, "{} {t}\n", "#".repeat(n as usize));
            }
            Block::P(t) => {
                let _ = writeln!(s, "{t}\n");
            }
            Block::List(items) => {
                for i in items {
                    let _ = writeln!(s, "- {i}");
                }
                s.push('\n');
            }
            Block::Table(head, rows) => {
                let _ = writeln!(
                    s,
                    "| {} |",
                    head.iter()
                        .map(|h| md_cell(h))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
                let _ = writeln!(s, "|{}", " --- |".repeat(head.len()));
                for row in rows {
                    let _ = writeln!(
                        s,
                        "| {} |",
                        row.iter()
                            .map(|c| md_cell(c))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    );
                }
                s.push('\n');
            }
            Block::Code(t) => {
                let fence = if t.contains("```") { "````" } else { "```" };
                let _ = writeln!(s, "{fence}text\n{}\n{fence}\n", t.trim_end());
            }
            Block::Chart(_) => {}
        }
    }
    s
}

// ---- HTML ----

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Escapes, then turns `code`, **strong** and *em* into tags.
fn inline(s: &str) -> String {
    let e = esc(s);
    let mut out = String::new();
    let mut rest = e.as_str();
    while let Some(i) = rest.find('`') {
        out.push_str(&emphasis(&rest[..i]));
        match rest[i + 1..].find('`') {
            Some(j) => {
                let _ = write!(out, "<code>{}</code>", &rest[i + 1..i + 1 + j]);
                rest = &rest[i + 2 + j..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(&emphasis(rest));
    out
}

fn emphasis(s: &str) -> String {
    let mut out = String::new();
    let mut parts = s.split("**");
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, p) in parts.enumerate() {
        out.push_str(if i % 2 == 0 { "<strong>" } else { "</strong>" });
        out.push_str(p);
    }
    if s.matches("**").count() % 2 == 1 {
        out.push_str("</strong>");
    }
    out
}

const COLORS: &[&str] = &[
    "#7a7a7a", "#0f7b6c", "#b5651d", "#5b4b8a", "#a83232", "#2f6fb0",
];

fn color(name: &str) -> &'static str {
    match name {
        "runc" => COLORS[0],
        "scute" => COLORS[1],
        "crun" => COLORS[2],
        "youki" => COLORS[3],
        "kata" => COLORS[4],
        _ => COLORS[5],
    }
}

fn svg(c: &Chart) -> String {
    let (w, bar_h, gap, label_w) = (640.0, 22.0, 8.0, 90.0);
    let max = c.bars.iter().map(|b| b.1).fold(0.0_f64, f64::max);
    let scale = if max > 0.0 {
        (w - label_w - 110.0) / max
    } else {
        0.0
    };
    let h = 30.0 + c.bars.len() as f64 * (bar_h + gap);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{}\">",
        esc(&c.title)
    );
    let _ = write!(
        s,
        "<text x=\"0\" y=\"16\" font-size=\"14\" font-weight=\"bold\">{} ({}, {})</text>",
        esc(&c.title),
        esc(&c.unit),
        c.note
    );
    for (i, (name, v)) in c.bars.iter().enumerate() {
        let y = 26.0 + i as f64 * (bar_h + gap);
        let bw = (v * scale).max(1.0);
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{:.0}\" font-size=\"13\">{}</text>\
             <rect x=\"{label_w}\" y=\"{y:.0}\" width=\"{bw:.1}\" height=\"{bar_h}\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.0}\" font-size=\"13\">{} {}</text>",
            y + 16.0,
            esc(name),
            color(name),
            label_w + bw + 6.0,
            y + 16.0,
            f(*v),
            esc(&c.unit)
        );
    }
    s.push_str("</svg>");
    s
}

const CSS: &str = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#f2f2f2}pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}code{background:#f2f2f2;padding:0 3px}\
.charts svg{display:block;margin:1em 0}td.isolated{background:#dff3e4}td.exposed{background:#f8d7d7}td.not-applicable{background:#eee}";

pub fn html(r: &Results) -> String {
    let mut s = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>scute lab report</title><style>{CSS}</style></head><body>\n"
    );
    for b in document(r) {
        match b {
            Block::H(n, t) => {
                let _ = writeln!(s, "<h{n}>{}</h{n}>", inline(&t));
            }
            Block::P(t) => {
                let _ = writeln!(s, "<p>{}</p>", inline(&t));
            }
            Block::List(items) => {
                s.push_str("<ul>");
                for i in items {
                    let _ = write!(s, "<li>{}</li>", inline(&i));
                }
                s.push_str("</ul>\n");
            }
            Block::Table(head, rows) => {
                s.push_str("<table><tr>");
                for h in head {
                    let _ = write!(s, "<th>{}</th>", inline(&h));
                }
                s.push_str("</tr>");
                for row in rows {
                    s.push_str("<tr>");
                    for c in row {
                        // Verdict cells are coloured.
                        let class = [Verdict::Isolated, Verdict::Exposed, Verdict::NotApplicable]
                            .into_iter()
                            .find(|v| c == format!("**{}**", v.as_str()))
                            .map(|v| format!(" class=\"{}\"", v.as_str().replace(' ', "-")))
                            .unwrap_or_default();
                        let _ = write!(s, "<td{class}>{}</td>", inline(&c));
                    }
                    s.push_str("</tr>");
                }
                s.push_str("</table>\n");
            }
            Block::Code(t) => {
                let _ = writeln!(s, "<pre>{}</pre>", esc(t.trim_end()));
            }
            Block::Chart(c) => {
                let _ = writeln!(s, "<div class=\"charts\">{}</div>", svg(&c));
            }
        }
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_markup() {
        assert_eq!(
            inline("a `<b>` **c** d"),
            "a <code>&lt;b&gt;</code> <strong>c</strong> d"
        );
        assert_eq!(inline("x ** y"), "x <strong> y</strong>");
    }

    #[test]
    fn numbers() {
        assert_eq!(f(1234.56), "1235");
        assert_eq!(f(12.345), "12.3");
        assert_eq!(f(1.2345), "1.23");
        assert_eq!(f(f64::NAN), "–");
        assert_eq!(ratio(50.0, 10.0), "5.0×");
        assert_eq!(ratio(500.0, 10.0), "50×");
        assert_eq!(ratio(1.0, 0.0), "–");
        assert_eq!(ratio(61.1, 12800.0), "0.0048×");
        assert_eq!(ratio(1234.0, 10.0), "120×");
        assert_eq!(ratio(4.5, 10.0), "0.45×");
    }
}
