//! `keel dump DIR`: the entries of the log as open would recover it, one per line, as text or
//! JSON Lines, for other tools. Every record is read back and checksum-verified; a damaged
//! record or a malformed entry is reported in its line (and in the exit code), never a panic.

use crate::inspect::{EXIT_CLEAN, EXIT_DAMAGE, LIVE_NOTE, fail};
use keel::inspect::{EntryReader, Layout, decode_storage_entry};
use keel::io::ReadOnlyFileSystem;
use keel::storage::EntryType;
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line of text per entry.
    Text,
    /// One JSON object per line (JSON Lines).
    Json,
}

#[derive(clap::Args)]
pub struct DumpArgs {
    /// A DiskStorage directory (hardstate, snapshots, log/) or a bare log directory (segments).
    pub dir: PathBuf,
    /// First index to print (default: the log's first).
    #[arg(long)]
    pub from: Option<u64>,
    /// Last index to print, inclusive (default: the log's last).
    #[arg(long)]
    pub to: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Bytes of data (and of context) shown in the hex and UTF-8 previews.
    #[arg(long, default_value_t = 64)]
    pub preview_bytes: usize,
}

/// One entry as printed.
struct Line {
    index: u64,
    term: u64,
    segment: String,
    record_offset: u64,
    /// "normal", "conf_change", "conf_change_v2"; "record" for a bare log (no type byte);
    /// "malformed" or "damaged" when it cannot be decoded or read.
    kind: &'static str,
    payload_bytes: Option<usize>,
    context: Option<Vec<u8>>,
    data: Option<Vec<u8>>,
    error: Option<String>,
}

pub fn dump(args: DumpArgs) -> ExitCode {
    let ins = match keel::inspect::inspect(&args.dir) {
        Ok(i) => i,
        Err(e) => return fail("dump", e),
    };
    if ins.live {
        eprintln!("keel dump: {LIVE_NOTE}");
    }
    let plan = match &ins.plan {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            eprintln!("keel dump: open would refuse this log, so there is no log to dump: {e}");
            return ExitCode::from(EXIT_DAMAGE);
        }
        None => {
            eprintln!("keel dump: {} has no log directory", ins.dir.display());
            return ExitCode::from(EXIT_DAMAGE);
        }
    };
    let from = args.from.unwrap_or(0);
    let to = args.to.unwrap_or(u64::MAX);
    if from > to {
        return fail("dump", format!("--from {from} is after --to {to}"));
    }
    let fs = ReadOnlyFileSystem;
    let mut reader = EntryReader::new(&fs);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut bad = 0u64;
    for loc in plan.entries.iter().filter(|l| (from..=to).contains(&l.index)) {
        let mut line = Line {
            index: loc.index,
            term: loc.term,
            segment: loc.path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            record_offset: loc.record_offset,
            kind: "damaged",
            payload_bytes: None,
            context: None,
            data: None,
            error: None,
        };
        match reader.read(loc) {
            Err(e) => line.error = Some(e.to_string()),
            Ok(payload) => {
                line.payload_bytes = Some(payload.len());
                if ins.layout == Layout::Log {
                    line.kind = "record";
                    line.data = Some(payload);
                } else {
                    match decode_storage_entry(&payload) {
                        Ok(e) => {
                            line.kind = match e.entry_type {
                                EntryType::Normal => "normal",
                                EntryType::ConfChange => "conf_change",
                                EntryType::ConfChangeV2 => "conf_change_v2",
                            };
                            line.context = e.context.map(<[u8]>::to_vec);
                            line.data = Some(e.data.to_vec());
                        }
                        Err(why) => {
                            line.kind = "malformed";
                            line.error = Some(why);
                            line.data = Some(payload);
                        }
                    }
                }
            }
        }
        if line.error.is_some() {
            bad += 1;
        }
        let text = match args.format {
            Format::Text => text_line(&line, args.preview_bytes),
            Format::Json => json_line(&line, args.preview_bytes),
        };
        if writeln!(out, "{text}").is_err() {
            return ExitCode::from(EXIT_CLEAN); // the reader went away (a closed pipe)
        }
    }
    if out.flush().is_err() {
        return ExitCode::from(EXIT_CLEAN);
    }
    // A storage open refuses for its own reasons (a missing HardState, committed entries
    // missing, a missing snapshot): the log's entries are printed, but open would recover none.
    let refusals: Vec<_> = ins.findings().into_iter().filter(|f| f.consequence.starts_with("open refuses")).collect();
    for f in &refusals {
        eprintln!(
            "keel dump: DiskStorage::open would refuse this directory{}: {}",
            f.label.map_or(String::new(), |l| format!(" [{l}]")),
            f.what
        );
    }
    if bad > 0 {
        eprintln!("keel dump: {bad} entries could not be read or decoded");
        return ExitCode::from(EXIT_DAMAGE);
    }
    if !refusals.is_empty() {
        return ExitCode::from(EXIT_DAMAGE);
    }
    ExitCode::from(EXIT_CLEAN)
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::with_capacity(2 * b.len()), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The bytes as text, if they are UTF-8 with no control characters but newline and tab.
fn printable(b: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(b).ok()?;
    s.chars().all(|c| !c.is_control() || c == '\n' || c == '\t').then_some(s)
}

/// The first `n` bytes; a cut that splits a UTF-8 character of text is moved back to its
/// start. Binary data is cut at `n`: moving back over every byte that merely looks like a
/// continuation byte (`0x80..=0xbf`) could empty the preview.
fn preview(b: &[u8], n: usize) -> &[u8] {
    if b.len() <= n {
        return b;
    }
    match std::str::from_utf8(&b[..n]) {
        // Valid UTF-8 but for an incomplete character at the cut (at most 3 bytes).
        Err(e) if e.error_len().is_none() => &b[..e.valid_up_to()],
        _ => &b[..n],
    }
}

fn text_line(l: &Line, n: usize) -> String {
    let mut s = format!("{} term {} {} ({} @ {})", l.index, l.term, l.kind, l.segment, l.record_offset);
    let mut part = |label: &str, b: &[u8]| {
        let p = preview(b, n);
        let more = if p.len() < b.len() { "…" } else { "" };
        let _ = write!(s, " {label} {} bytes {}{more}", b.len(), hex(p));
        if let Some(t) = printable(p) {
            let _ = write!(s, " {t:?}{more}");
        }
    };
    if let Some(c) = &l.context {
        part("context", c);
    }
    if let Some(d) = &l.data {
        part("data", d);
    }
    if let Some(e) = &l.error {
        let _ = write!(s, " error: {e}");
    }
    s
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_line(l: &Line, n: usize) -> String {
    let mut s = format!(
        "{{\"index\":{},\"term\":{},\"type\":{},\"segment\":{},\"record_offset\":{}",
        l.index,
        l.term,
        json_string(l.kind),
        json_string(&l.segment),
        l.record_offset
    );
    if let Some(p) = l.payload_bytes {
        let _ = write!(s, ",\"payload_size\":{p}");
    }
    let mut part = |label: &str, b: &[u8]| {
        let p = preview(b, n);
        let _ = write!(
            s,
            ",\"{label}_size\":{},\"{label}_hex\":{},\"{label}_utf8\":{},\"{label}_truncated\":{}",
            b.len(),
            json_string(&hex(p)),
            printable(p).map_or("null".into(), json_string),
            p.len() < b.len()
        );
    };
    if let Some(c) = &l.context {
        part("context", c);
    }
    if let Some(d) = &l.data {
        part("data", d);
    }
    if let Some(e) = &l.error {
        let _ = write!(s, ",\"error\":{}", json_string(e));
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_cut_text_at_a_character_and_binary_at_n() {
        assert_eq!(preview("aé".as_bytes(), 2), b"a", "é is 2 bytes: not split");
        assert_eq!(preview(b"abc", 2), b"ab");
        let binary = [0x80u8; 100];
        assert_eq!(preview(&binary, 8).len(), 8, "binary data is not cut back to nothing");
        assert_eq!(printable(preview(&binary, 8)), None);
        let mixed: Vec<u8> = (0..100u8).map(|i| 0x80 | (i & 0x3f)).collect();
        assert_eq!(preview(&mixed, 8), &mixed[..8]);
    }
}
