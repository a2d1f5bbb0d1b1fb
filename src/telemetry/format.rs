//! The human-readable log format, with a fast path for the access log.
//!
//! Every request logs one `sessiond::access` line. tracing-subscriber's default format writes it
//! through several layers of `Display` (styles that paint nothing when colours are off, padded
//! levels, a calendar computed for every timestamp), which made formatting the access line a
//! quarter of the instructions of a cached `GET`. [`Format`] writes that line itself, byte for
//! byte as the default format would (the tests compare them), and hands every other event, and
//! every event when colours are on, to the default format.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::registry::LookupSpan;

/// The target of the access log's events.
pub const ACCESS_TARGET: &str = "sessiond::access";

/// The default full format, writing access lines itself.
#[derive(Default)]
pub struct Format {
    default: format::Format,
}

impl<S, N> FormatEvent<S, N> for Format
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // Spans would be printed before the target; access events are logged outside any.
        if meta.target() != ACCESS_TARGET
            || writer.has_ansi_escapes()
            || ctx.lookup_current().is_some()
        {
            return self.default.format_event(ctx, writer, event);
        }
        write_timestamp(&mut writer)?;
        writer.write_char(' ')?;
        writer.write_str(level(meta.level()))?;
        writer.write_char(' ')?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = Fields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The level as the default format pads it.
fn level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

/// Writes fields as the default format's visitor does: the message as it is, every other field
/// as `name=value`, strings quoted and escaped as `Debug` does, separated by single spaces.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let start = if std::mem::take(&mut self.first) {
            Ok(())
        } else {
            self.writer.write_char(' ')
        };
        self.result = start.and_then(|()| {
            if field.name() != "message" {
                self.writer.write_str(field.name())?;
                self.writer.write_char('=')?;
            }
            value(self.writer)
        });
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            return self.record_debug(field, &format_args!("{value}"));
        }
        self.field(field, |writer| {
            // Printable ASCII without quotes or backslashes is what `Debug` leaves alone.
            if value
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
            {
                writer.write_char('"')?;
                writer.write_str(value)?;
                writer.write_char('"')
            } else {
                write!(writer, "{value:?}")
            }
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |writer| {
            let mut digits = [0u8; 20];
            let mut at = digits.len();
            let mut rest = value;
            loop {
                at -= 1;
                digits[at] = b'0' + (rest % 10) as u8;
                rest /= 10;
                if rest == 0 {
                    break;
                }
            }
            // Only ASCII digits were written.
            writer.write_str(std::str::from_utf8(&digits[at..]).map_err(|_| fmt::Error)?)
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let message = field.name() == "message";
        self.field(field, |writer| {
            if message && writer.sanitizes_ansi_escapes() {
                write!(Escaping(writer), "{value:?}")
            } else {
                write!(writer, "{value:?}")
            }
        });
    }
}

/// What the default format does to a message so that it cannot drive a terminal: control
/// characters of escape sequences are written escaped.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for ch in text.chars() {
            match ch {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
                _ => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

thread_local! {
    /// The second last formatted on this thread and its text up to the seconds: the calendar
    /// is computed once a second, not once a line.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// The current time as the default format's `SystemTime` writes it:
/// `2026-12-07T13:10:37.289891Z`.
fn write_timestamp(writer: &mut Writer<'_>) -> fmt::Result {
    let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) else {
        return tracing_subscriber::fmt::time::SystemTime.format_time(writer);
    };
    let seconds = now.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != seconds {
        let Some(formatted) = calendar(seconds) else {
            // Past year 9999: the default's own formatting.
            return tracing_subscriber::fmt::time::SystemTime.format_time(writer);
        };
        text = formatted;
        SECOND.set((seconds, text));
    }
    writer.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)?;
    let micros = now.subsec_micros();
    let mut fraction = *b".000000Z";
    let mut rest = micros;
    for at in (1..7).rev() {
        fraction[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    writer.write_str(std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?)
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time in UTC, for years up to 9999.
fn calendar(seconds: u64) -> Option<[u8; 19]> {
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    // Howard Hinnant's `civil_from_days`, for days since 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let of_era = z - era * 146_097;
    let year_of_era = (of_era - of_era / 1460 + of_era / 36_524 - of_era / 146_096) / 365;
    let day_of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    if year > 9999 {
        return None;
    }
    let mut text = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, value: u64| {
        let mut rest = value;
        for i in (at..at + width).rev() {
            text[i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day % 3600 / 60);
    put(17, 2, of_day % 60);
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Capture;

        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    /// The lines `log` writes through the default format and through ours.
    fn both(log: impl Fn()) -> (String, String) {
        let default = Capture::default();
        let ours = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(default.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, &log);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(ours.clone())
            .event_format(Format::default())
            .finish();
        tracing::subscriber::with_default(subscriber, &log);
        let text = |c: Capture| String::from_utf8(c.0.lock().unwrap().clone()).unwrap();
        (text(default), text(ours))
    }

    /// A line without its timestamp (the two runs differ in it).
    fn after_time(line: &str) -> &str {
        line.split_once(' ').map_or("", |(_, rest)| rest)
    }

    #[test]
    fn access_lines_are_written_as_the_default_format_writes_them() {
        let method = axum::http::Method::PATCH;
        let brew = axum::http::Method::from_bytes(b"BREW").unwrap();
        let (default, ours) = both(|| {
            tracing::info!(
                target: "sessiond::access",
                request_id = "0pbvq06ngggve4rm1q76tmnyst",
                method = %method,
                route = "/v1/sessions/{id}",
                status = 200u16,
                latency_us = 172u64,
                bytes = Some(15u64),
                "request"
            );
            tracing::info!(
                target: "sessiond::access",
                request_id = "a\"b\\c\u{7}é",
                method = %brew,
                route = "unmatched",
                status = 0u16,
                latency_us = u64::MAX,
                bytes = None::<u64>,
                "request"
            );
            tracing::warn!(target: "sessiond::access", note = "elsewhere", "x {} \x1b[2J\u{85} y", 1);
            tracing::error!(target: "sessiond::other", error = "not ours", "request failed");
        });
        let default: Vec<&str> = default.lines().collect();
        let ours: Vec<&str> = ours.lines().collect();
        assert_eq!(default.len(), 4);
        assert_eq!(ours.len(), 4);
        for (d, o) in default.iter().zip(&ours) {
            assert_eq!(after_time(d), after_time(o));
        }
        assert_eq!(
            after_time(ours[0]),
            " INFO sessiond::access: request request_id=\"0pbvq06ngggve4rm1q76tmnyst\" \
             method=PATCH route=\"/v1/sessions/{id}\" status=200 latency_us=172 bytes=15"
        );
    }

    #[test]
    fn timestamps_have_the_default_shape_and_the_current_time() {
        let (default, ours) = both(|| tracing::info!(target: "sessiond::access", "request"));
        let stamp = |line: &str| line.split(' ').next().unwrap_or_default().to_owned();
        let (default, ours) = (stamp(&default), stamp(&ours));
        assert_eq!(ours.len(), default.len(), "{ours} vs {default}");
        // Taken moments apart: the same second, unless one fell just across it.
        assert_eq!(ours[..17], default[..17], "{ours} vs {default}");
        assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.');
    }

    #[test]
    fn calendar_dates() {
        let text = |s| String::from_utf8(calendar(s).unwrap().to_vec()).unwrap();
        assert_eq!(text(0), "1970-01-01T00:00:00");
        assert_eq!(text(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(text(1_796_647_404), "2026-12-07T12:43:24");
        assert_eq!(text(4_107_542_399), "2100-02-28T23:59:59");
        assert_eq!(text(253_402_300_799), "9999-12-31T23:59:59");
        assert_eq!(calendar(253_402_300_800), None);
    }
}
