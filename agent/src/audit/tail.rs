//! Reading the journal for people: `pgwarden audit tail` (filtered, one line per event or the
//! stored JSON, following appends and rotation) and `pgwarden audit replay` (one session's
//! statements in order, with offsets from its start, and under each the result sample its
//! profile's `record_results` kept, as a table).
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::canon::result::{Sample, SampleSet};
use super::record::{Decision, Event, Record, one_line};
use super::segments;
use super::time::parse_time;

/// Which records to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Workload name.
    pub workload: Option<String>,
    /// Decision (`allow`, `deny`, `mask`, `hold`).
    pub decision: Option<String>,
    /// Session id.
    pub session: Option<String>,
    /// Not before, microseconds since the epoch.
    pub since: Option<i64>,
}

impl Filter {
    /// Whether `rec` passes.
    pub fn matches(&self, rec: &Record) -> bool {
        self.workload
            .as_ref()
            .is_none_or(|w| rec.workload.as_ref() == Some(w))
            && self
                .decision
                .as_ref()
                .is_none_or(|d| rec.decision.is_some_and(|x| x.as_str() == d))
            && self
                .session
                .as_ref()
                .is_none_or(|s| rec.session_id.as_ref() == Some(s))
            && self
                .since
                .is_none_or(|t| parse_time(&rec.time).is_some_and(|r| r >= t))
    }
}

/// A `--since` that [`parse_since`] cannot read.
#[derive(Debug, thiserror::Error)]
pub enum SinceError {
    /// Neither a time, a date, nor a number and a unit.
    #[error("--since {0}: use an RFC 3339 time, a date, or e.g. 15m, 2h, 7d")]
    Unreadable(String),
    /// A number with a unit that is not one of `s`, `m`, `h`, `d`.
    #[error("--since {0}: the unit is one of s, m, h, d")]
    Unit(String),
}

/// `--since`: an RFC 3339 time, a date (`2026-11-25`, UTC), or a span ago (`90s`, `15m`,
/// `2h`, `7d`). Returns microseconds since the epoch.
pub fn parse_since(text: &str, now_micros: i64) -> Result<i64, SinceError> {
    if let Some(t) = parse_time(text) {
        return Ok(t);
    }
    // The unit is the last character (split where it starts, whatever its width).
    let at = text.char_indices().next_back().map_or(0, |(i, _)| i);
    let (num, unit) = text.split_at(at);
    let n: i64 = num
        .parse()
        .map_err(|_| SinceError::Unreadable(text.to_owned()))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(SinceError::Unit(text.to_owned())),
    };
    Ok(now_micros - secs * 1_000_000)
}

/// The chain's files, oldest first: rotated files, then `path`.
pub fn chain_paths(path: &Path) -> Vec<PathBuf> {
    segments::chain_paths(path)
}

/// The rotated files of `path`, newest first.
fn rotated_newest_first(path: &Path) -> Vec<PathBuf> {
    segments::rotated(path)
        .into_iter()
        .rev()
        .map(|s| s.path)
        .collect()
}

/// Who is behind each session, from the `session.start` records seen: the per-statement
/// records carry only the session id (and workload), and lines for people show the process.
#[derive(Default)]
struct Sessions(std::collections::HashMap<String, super::record::Actor>);

impl Sessions {
    /// Learns from `recs`.
    fn learn(&mut self, recs: &[(String, Record)]) {
        for (_, r) in recs {
            if let (Event::SessionStart, Some(id), Some(a)) = (r.event, &r.session_id, &r.actor) {
                self.0.insert(id.clone(), a.clone());
            }
        }
    }

    /// `rec` with its session's actor, when it carries none.
    fn fill(&self, rec: &Record) -> Option<Record> {
        if rec.actor.is_some() {
            return None;
        }
        let a = self.0.get(rec.session_id.as_deref()?)?;
        let mut r = rec.clone();
        r.actor = Some(a.clone());
        Some(r)
    }
}

/// The records of one file with their stored lines; lines that are not records are skipped.
pub fn read_records(path: &Path) -> io::Result<Vec<(String, Record)>> {
    match segments::read(path) {
        Ok(b) => Ok(parse_lines(&b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// How to print.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// Print the stored JSON lines.
    pub json: bool,
    /// ANSI colours.
    pub colour: bool,
}

impl Style {
    /// Colours when stdout is a terminal and `NO_COLOR` is not set.
    pub fn for_stdout(json: bool) -> Self {
        Self {
            json,
            colour: std::io::IsTerminal::is_terminal(&std::io::stdout())
                && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn print(self, out: &mut dyn Write, line: &str, rec: &Record) -> io::Result<()> {
        if self.json {
            writeln!(out, "{line}")
        } else {
            writeln!(out, "{}", render(rec, self.colour))
        }
    }
}

const RESET: &str = "\x1b[0m";

fn paint(colour: bool, code: &str, text: &str) -> String {
    if colour {
        format!("\x1b[{code}m{text}{RESET}")
    } else {
        text.to_owned()
    }
}

/// One readable line: time, seq, event, workload, decision, rule, pid/exe, and the
/// statement (or what else the event carries), truncated.
pub fn render(rec: &Record, colour: bool) -> String {
    let event_colour = match rec.event {
        Event::QueryDenied | Event::ApprovalDenied => "31",
        Event::AuditGap | Event::AuditReopen | Event::AuditRetention => "1;33",
        Event::ApprovalRequested | Event::ApprovalExpired | Event::ApprovalWithdrawn => "33",
        Event::ApprovalGranted => "32",
        Event::SessionStart | Event::SessionEnd | Event::AgentStart | Event::AgentStop => "1",
        _ => "0",
    };
    let decision = rec.decision.map_or("-".to_owned(), |d| d.to_string());
    let decision_colour = match rec.decision {
        Some(Decision::Deny) => "1;31",
        Some(Decision::Hold) => "33",
        Some(Decision::Mask) => "36",
        Some(Decision::Allow) => "32",
        None => "2",
    };
    let mut s = format!(
        "{} {:>7} {} {:<16} {} {:<20}",
        paint(colour, "2", &rec.time),
        rec.seq,
        paint(colour, event_colour, &format!("{:<18}", rec.event.as_str())),
        rec.workload.as_deref().unwrap_or("-"),
        paint(colour, decision_colour, &format!("{decision:<5}")),
        rec.rule.as_deref().unwrap_or("-"),
    );
    if let Some(a) = &rec.actor {
        let _ = write!(
            s,
            " pid={} {}",
            a.pid.map_or("-".into(), |p| p.to_string()),
            a.exe.as_deref().or(a.comm.as_deref()).unwrap_or("-")
        );
    }
    let what = what(rec);
    if !what.is_empty() {
        s.push_str("  ");
        s.push_str(&what);
    }
    s
}

/// The event-specific part of a line.
fn what(rec: &Record) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(r) = rec.rows {
        parts.push(format!("rows={r}"));
    }
    if let Some(d) = rec.duration_us {
        parts.push(duration(d));
    }
    if let Some(o) = rec.outcome {
        parts.push(format!("{o:?}").to_lowercase());
    }
    if let Some(c) = &rec.sqlstate {
        parts.push(format!("sqlstate={c}"));
    }
    if rec.event == Event::SessionStart {
        if let (Some(c), Some(sv)) = (&rec.client, &rec.server) {
            parts.push(format!("{c} -> {sv}"));
        }
        if let Some(db) = &rec.db {
            parts.push(format!(
                "{}@{}",
                db.user.as_deref().unwrap_or("?"),
                db.database.as_deref().unwrap_or("?")
            ));
        }
    }
    for m in &rec.masked {
        parts.push(format!("masked {}:{}x{}", m.column, m.method, m.count));
    }
    if let Some(st) = &rec.statement {
        parts.push(one_line(&st.text, 120));
    } else if let Some(e) = &rec.error {
        parts.push(one_line(e, 120));
    } else if !rec.detail.is_empty() {
        // A result sample is a table for `replay`, not a line: here only its size.
        let mut detail = rec.detail.clone();
        if let Some(result) = detail.remove("result") {
            let kept = result["rows"].as_array().map_or(0, Vec::len);
            parts.push(format!("result sample: {kept} row(s)"));
        }
        if !detail.is_empty() {
            parts.push(one_line(
                &serde_json::Value::Object(detail).to_string(),
                120,
            ));
        }
    }
    parts.join(" ")
}

/// `1.500ms`, `2.345s`, `120us`.
pub fn duration(us: u64) -> String {
    match us {
        0..1000 => format!("{us}us"),
        1000..1_000_000 => format!("{:.3}ms", us as f64 / 1e3),
        _ => format!("{:.3}s", us as f64 / 1e6),
    }
}

/// `pgwarden audit tail`.
pub struct TailOptions {
    /// The journal file (its rotated siblings are read too, newest first, as needed).
    pub path: PathBuf,
    /// Filters.
    pub filter: Filter,
    /// The last N matching records; `None`: all.
    pub last: Option<usize>,
    /// Keep printing as records are appended (and across rotation).
    pub follow: bool,
    /// How to print.
    pub style: Style,
    /// Poll interval when following.
    pub poll: Duration,
}

/// Runs `tail` until done (or, following, until the output goes away).
///
/// Following is driven by `seq`: only records past the last one seen are printed, so a
/// record is printed once however the files move. On rotation the old file is read to its
/// end, then the rotated files newer than it (several rotations may happen between two
/// polls), then the new file.
pub fn tail(opts: &TailOptions, out: &mut dyn Write) -> io::Result<()> {
    // The current file first, through the handle we go on following with.
    let mut current = match File::open(&opts.path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound && opts.follow => None,
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", opts.path.display()),
            ));
        }
    };
    let mut text = Vec::new();
    if let Some(f) = &mut current {
        f.read_to_end(&mut text)?;
    }
    // A last line without its newline yet is left for following.
    let complete = text.iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
    let mut partial = text.split_off(complete);
    let mut last_seq = 0;
    let mut sessions = Sessions::default();
    let mut keep = |recs: Vec<(String, Record)>, last_seq: &mut u64| -> Vec<(String, Record)> {
        *last_seq = recs.iter().map(|r| r.1.seq).fold(*last_seq, u64::max);
        sessions.learn(&recs);
        recs.into_iter()
            .filter(|(_, r)| opts.filter.matches(r))
            .collect()
    };
    let mut shown = keep(parse_lines(&text), &mut last_seq);
    // Older files, newest first, until we have enough.
    for rotated in rotated_newest_first(&opts.path) {
        if opts.last.is_some_and(|n| shown.len() >= n) {
            break;
        }
        let mut older = keep(read_records(&rotated)?, &mut last_seq);
        older.append(&mut shown);
        shown = older;
    }
    let skip = opts.last.map_or(0, |n| shown.len().saturating_sub(n));
    for (line, rec) in &shown[skip..] {
        let filled = sessions.fill(rec);
        if opts
            .style
            .print(out, line, filled.as_ref().unwrap_or(rec))
            .is_err()
        {
            return Ok(());
        }
    }
    out.flush()?;
    if !opts.follow {
        return Ok(());
    }
    // Prints the records past `last_seq` that pass the filter; false when the output went
    // away.
    let mut emit = |recs: Vec<(String, Record)>, last_seq: &mut u64, out: &mut dyn Write| -> bool {
        sessions.learn(&recs);
        for (line, rec) in recs {
            if rec.seq <= *last_seq {
                continue;
            }
            *last_seq = rec.seq;
            let filled = sessions.fill(&rec);
            if opts.filter.matches(&rec)
                && opts
                    .style
                    .print(out, &line, filled.as_ref().unwrap_or(&rec))
                    .is_err()
            {
                return false;
            }
        }
        out.flush().is_ok()
    };
    // The complete lines of `partial` (an unfinished last line stays in it).
    let complete_lines = |partial: &mut Vec<u8>| -> Vec<(String, Record)> {
        let complete = partial
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |p| p + 1);
        let rest = partial.split_off(complete);
        let recs = parse_lines(partial);
        *partial = rest;
        recs
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut got = false;
        if let Some(f) = &mut current {
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got = true;
                partial.extend_from_slice(&buf[..n]);
            }
        }
        if got {
            if !emit(complete_lines(&mut partial), &mut last_seq, out) {
                return Ok(());
            }
            continue;
        }
        match (std::fs::metadata(&opts.path), &mut current) {
            (Ok(m), Some(f)) => {
                let fm = f.metadata()?;
                if m.ino() != fm.ino() || m.dev() != fm.dev() {
                    // Rotated: the old file to its end (the writer is done with it)...
                    f.read_to_end(&mut partial)?;
                    if !emit(complete_lines(&mut partial), &mut last_seq, out) {
                        return Ok(());
                    }
                    partial.clear();
                    let next = File::open(&opts.path).ok();
                    // ...the rotated files newer than it, oldest first...
                    let mut newer = Vec::new();
                    for p in rotated_newest_first(&opts.path) {
                        let recs = read_records(&p)?;
                        let first = recs.first().map_or(u64::MAX, |r| r.1.seq);
                        newer.push(recs);
                        if first <= last_seq + 1 {
                            break;
                        }
                    }
                    for recs in newer.into_iter().rev() {
                        if !emit(recs, &mut last_seq, out) {
                            return Ok(());
                        }
                    }
                    // ...then the new file, from its start.
                    current = next;
                    continue;
                }
                if m.len() < f.stream_position()? {
                    f.seek(SeekFrom::Start(0))?;
                    partial.clear();
                    continue;
                }
            }
            (Ok(_), None) => {
                current = File::open(&opts.path).ok();
                continue;
            }
            (Err(_), _) => {}
        }
        std::thread::sleep(opts.poll);
    }
}

/// The records among `text`'s lines, with the lines as stored.
fn parse_lines(text: &[u8]) -> Vec<(String, Record)> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|l| Some((l.to_owned(), serde_json::from_str(l).ok()?)))
        .collect()
}

/// `pgwarden audit replay`: the records of `session` across the chain of `path`, in order.
pub fn replay(path: &Path, session: &str, out: &mut impl Write) -> io::Result<usize> {
    let mut recs: Vec<Record> = Vec::new();
    for p in chain_paths(path) {
        recs.extend(
            read_records(&p)?
                .into_iter()
                .map(|(_, r)| r)
                .filter(|r| r.session_id.as_deref() == Some(session)),
        );
    }
    if recs.is_empty() {
        return Ok(0);
    }
    recs.sort_by_key(|r| r.seq);
    let start_rec = recs
        .iter()
        .find(|r| r.event == Event::SessionStart)
        .unwrap_or(&recs[0]);
    let start = parse_time(&start_rec.time).unwrap_or(0);
    writeln!(
        out,
        "session {session}  workload {}",
        start_rec.workload.as_deref().unwrap_or("-")
    )?;
    if let Some(a) = &start_rec.actor {
        writeln!(
            out,
            "  actor   pid {} uid {} ({}) exe {} cgroup {}",
            a.pid.map_or("-".into(), |p| p.to_string()),
            a.uid.map_or("-".into(), |p| p.to_string()),
            a.user.as_deref().unwrap_or("-"),
            a.exe.as_deref().unwrap_or("-"),
            a.cgroup.as_deref().unwrap_or("-"),
        )?;
    }
    if let (Some(c), Some(s)) = (&start_rec.client, &start_rec.server) {
        writeln!(out, "  client  {c} -> server {s}")?;
    }
    if let Some(db) = &start_rec.db {
        writeln!(
            out,
            "  db      user {} database {} application {}",
            db.user.as_deref().unwrap_or("-"),
            db.database.as_deref().unwrap_or("-"),
            db.application_name.as_deref().unwrap_or("-")
        )?;
    }
    writeln!(out, "  started {}", start_rec.time)?;
    let (mut allowed, mut denied, mut held) = (0, 0, 0);
    for r in &recs {
        let offset = parse_time(&r.time).map_or(0, |t| t - start);
        let sign = if offset < 0 { "-" } else { "+" };
        let mut line = format!(
            "  {sign}{:.6}s  #{:<7} {:<18}",
            offset.unsigned_abs() as f64 / 1e6,
            r.seq,
            r.event.as_str()
        );
        let _ = write!(
            line,
            " {:<5} {:<20}",
            r.decision.map_or("-", Decision::as_str),
            r.rule.as_deref().unwrap_or("-")
        );
        match r.decision {
            Some(Decision::Deny) => denied += 1,
            Some(Decision::Hold) => held += 1,
            Some(Decision::Allow | Decision::Mask) => allowed += 1,
            None => {}
        }
        // What the workload saw (`record_results`) goes under the line, as a table.
        let sample = Sample::of(&r.detail);
        let w = if sample.is_some() {
            let mut shown = r.clone();
            shown.detail.remove("result");
            what(&shown)
        } else {
            what(r)
        };
        if !w.is_empty() {
            let _ = write!(line, "  {w}");
        }
        writeln!(out, "{line}")?;
        if let Some(sample) = &sample {
            for l in sample_lines(sample) {
                writeln!(out, "      {l}")?;
            }
        }
    }
    writeln!(
        out,
        "  {} record(s): {allowed} allowed, {denied} denied, {held} held",
        recs.len()
    )?;
    Ok(recs.len())
}

/// The widest a value of a result sample is shown in `replay` (characters).
const CELL_WIDTH: usize = 40;

/// One value of a result sample, for a table cell: on one line, cut at [`CELL_WIDTH`].
fn cell(v: &serde_json::Value) -> String {
    use serde_json::Value;
    let text = match v {
        Value::Null => "NULL".to_owned(),
        Value::String(s) => s.clone(),
        Value::Object(o) => match (o.get("hex"), o.get("withheld"), o.get("format")) {
            (Some(h), _, Some(f)) if f == "binary" => format!("\\x{}", h.as_str().unwrap_or("")),
            (Some(h), _, _) => format!("(not UTF-8) \\x{}", h.as_str().unwrap_or("")),
            (None, Some(w), _) => format!("(withheld: {})", w.as_str().unwrap_or("?")),
            _ => v.to_string(),
        },
        other => other.to_string(),
    };
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > CELL_WIDTH {
        let mut cut: String = flat.chars().take(CELL_WIDTH - 1).collect();
        cut.push('…');
        cut
    } else {
        flat
    }
}

/// A result set as an aligned table: the column names, a rule, the rows.
fn table(set: &SampleSet) -> Vec<String> {
    let header: Vec<String> = if set.copy {
        vec!["COPY data".to_owned()]
    } else {
        set.columns
            .iter()
            .map(|c| cell(&serde_json::Value::String(c.clone())))
            .collect()
    };
    let rows: Vec<Vec<String>> = set
        .rows
        .iter()
        .map(|r| r.iter().map(cell).collect())
        .collect();
    let n = rows.iter().map(Vec::len).fold(header.len(), usize::max);
    let width = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .chain(header.get(i))
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..n).map(width).collect();
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, w) in widths.iter().enumerate() {
            if i > 0 {
                s.push_str(" | ");
            }
            let c = cells.get(i).map_or("", String::as_str);
            let _ = write!(s, "{c:<w$}");
        }
        s.trim_end().to_owned()
    };
    let mut out = vec![line(&header)];
    out.push(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    out.extend(rows.iter().map(|r| line(r)));
    out
}

/// What a statement's result sent, as `replay` shows it: a table per result set, then how
/// many rows were left out, the total and the digest.
fn sample_lines(s: &Sample) -> Vec<String> {
    let sets = s.result_sets();
    let several = !s.sets.is_empty();
    let mut out = Vec::new();
    let mut accounted = 0u64;
    for (i, set) in sets.iter().enumerate() {
        out.extend(table(set));
        let shown = set.rows.len() as u64;
        accounted += set.total_rows;
        let more = set.total_rows.saturating_sub(shown);
        if more > 0 && (several || i + 1 < sets.len()) {
            out.push(format!("… {more} more row{}", plural(more)));
        } else if more > 0 {
            out.push(format!("… {more} more row{} ({})", plural(more), totals(s)));
            return with_truncation(out, s);
        }
    }
    let rest = s.total_rows.saturating_sub(accounted);
    if rest > 0 {
        out.push(format!(
            "… {rest} more row{} in later result sets",
            plural(rest)
        ));
    }
    out.push(format!("({})", totals(s)));
    with_truncation(out, s)
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `total 10, sha256 …`, or why the digest is not there.
fn totals(s: &Sample) -> String {
    match &s.sha256 {
        Some(h) => format!("total {}, sha256 {h}", s.total_rows),
        None => format!(
            "total {}, sha256 withheld: {} value{} held card numbers the policy did not mask",
            s.total_rows,
            s.unmasked_pans,
            plural(s.unmasked_pans)
        ),
    }
}

fn with_truncation(mut out: Vec<String>, s: &Sample) -> Vec<String> {
    if s.truncated {
        out.push("(the sample stopped at its byte cap)".to_owned());
    }
    out
}

#[cfg(test)]
mod tests;
