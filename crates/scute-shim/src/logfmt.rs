//! The shim's `tracing` events as log records containerd's log can parse.
//!
//! containerd-shim's logger writes `msg="<message>"` without escaping, and
//! tracing's own bridge puts the fields into the message with Debug quotes
//! (`sandbox_id="x"`), which ended the `msg` value early for a logfmt
//! parser. This layer formats each event as `message key=value …`, quoting
//! (with escapes) only values that need it, escapes the whole for the
//! surrounding quotes, and hands it to the `log` logger.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

pub struct LogfmtBridge;

/// `value` as a logfmt value: bare when it can be, else quoted.
fn value(v: &str) -> String {
    let bare = !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=' || c == '\\');
    if bare {
        v.to_owned()
    } else {
        format!("\"{}\"", escape(v))
    }
}

/// Backslashes, quotes and line breaks escaped (the value then fits in
/// quotes on one line).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Default)]
struct Fields {
    message: String,
    pairs: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, v: &str) {
        if field.name() == "message" {
            self.message = v.to_owned();
        } else {
            let _ = write!(self.pairs, " {}={}", field.name(), value(v));
        }
    }

    fn record_debug(&mut self, field: &Field, v: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{v:?}");
        } else {
            let _ = write!(self.pairs, " {}={}", field.name(), value(&format!("{v:?}")));
        }
    }
}

/// The line an event becomes: message and fields, escaped to sit inside
/// `msg="…"`.
fn line(fields: &Fields) -> String {
    escape(&format!("{}{}", fields.message, fields.pairs))
}

fn level(l: &Level) -> log::Level {
    match *l {
        Level::ERROR => log::Level::Error,
        Level::WARN => log::Level::Warn,
        Level::INFO => log::Level::Info,
        Level::DEBUG => log::Level::Debug,
        Level::TRACE => log::Level::Trace,
    }
}

impl<S: Subscriber> Layer<S> for LogfmtBridge {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let lvl = level(meta.level());
        if lvl > log::max_level() {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let text = line(&fields);
        log::logger().log(
            &log::Record::builder()
                .args(format_args!("{text}"))
                .level(lvl)
                .target(meta.target())
                .module_path(meta.module_path())
                .file(meta.file())
                .line(meta.line())
                .build(),
        );
    }
}

/// Routes every `tracing` event of the process through [`LogfmtBridge`].
pub fn install() {
    use tracing_subscriber::layer::SubscriberExt;
    let _ =
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(LogfmtBridge));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_spaces_and_quotes_stay_inside_msg() {
        let f = Fields {
            message: "sandbox ready".into(),
            pairs: format!(
                " sandbox_id={} reason={} kernel={}",
                value("ps1"),
                value("/dev/kvm is \"PVM\""),
                value("6.1")
            ),
        };
        let l = line(&f);
        assert_eq!(
            l,
            r#"sandbox ready sandbox_id=ps1 reason=\"/dev/kvm is \\\"PVM\\\"\" kernel=6.1"#
        );
        // As containerd-shim writes it: one logfmt value, no bare quote.
        let written = format!("msg=\"{l}\"");
        let inner = &written[5..written.len() - 1];
        let mut escaped = false;
        for c in inner.chars() {
            assert!(escaped || c != '"', "bare quote in {written}");
            escaped = !escaped && c == '\\';
        }
        assert_eq!(value("a\nb"), "\"a\\nb\"");
        assert_eq!(value(""), "\"\"");
    }
}
