//! The shared clock, the record payload that carries its intended send time,
//! and small helpers.

use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the bench process's epoch. Every timestamp the bench
/// writes into a payload and every receive time comes from this one
/// monotonic clock, so a latency is one subtraction.
pub(crate) fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Starts the clock (call first thing in `main`).
pub(crate) fn start_clock() {
    let _ = now_us();
}

/// Sleeps (blocking the thread) until `deadline_us` on the bench clock.
pub(crate) fn sleep_until_us(deadline_us: u64) {
    let now = now_us();
    if deadline_us > now {
        std::thread::sleep(Duration::from_micros(deadline_us - now));
    }
}

/// A JSON record value of exactly `size` bytes (when `size` is large enough)
/// that carries its intended send time: `{"t":123,"pad":"xxxx"}`.
pub(crate) fn value(t_us: u64, size: usize) -> String {
    let head = format!("{{\"t\":{t_us},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut v = String::with_capacity(head.len() + pad + 2);
    v.push_str(&head);
    v.extend(std::iter::repeat_n('x', pad));
    v.push_str("\"}");
    v
}

/// The intended send time embedded by [`value`], found in any frame that
/// contains the value verbatim (a gateway `message` frame, a raw record).
/// No JSON parse: a substring search and an integer.
pub(crate) fn stamp(text: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"{\"t\":";
    static FINDER: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    let at = FINDER.find(text)? + KEY.len();
    let mut t = 0u64;
    let mut digits = 0;
    for &b in &text[at..] {
        if !b.is_ascii_digit() {
            break;
        }
        t = t * 10 + u64::from(b - b'0');
        digits += 1;
    }
    (digits > 0).then_some(t)
}

/// `"id":"..."` of a server frame, without a JSON parse.
pub(crate) fn frame_id(text: &str) -> Option<&str> {
    let at = text.find("\"id\":\"")? + 6;
    let len = text[at..].find('"')?;
    Some(&text[at..at + len])
}

/// The `type` of a server frame (`serde` writes the tag first).
pub(crate) fn frame_type(text: &str) -> &str {
    text.strip_prefix("{\"type\":\"").and_then(|rest| rest.split('"').next()).unwrap_or("")
}

/// Today's date and time in UTC, `YYYY-MM-DD HH:MM:SS UTC`, from the system
/// clock (no time-zone database needed).
pub(crate) fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `1234567.8` → `"1,234,568"`.
pub(crate) fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_has_the_size_and_the_stamp_round_trips() {
        let v = value(1_234_567, 200);
        assert_eq!(v.len(), 200);
        assert!(serde_json::from_str::<serde_json::Value>(&v).is_ok());
        let frame = format!(r#"{{"type":"message","topic":"t","value":{v}}}"#);
        assert_eq!(stamp(frame.as_bytes()), Some(1_234_567));
        assert_eq!(stamp(b"{\"type\":\"ack\"}"), None);
    }

    #[test]
    fn frame_fields_without_parsing() {
        let ack = r#"{"type":"ack","id":"17.900","topic":"t","partition":0,"offset":4}"#;
        assert_eq!(frame_type(ack), "ack");
        assert_eq!(frame_id(ack), Some("17.900"));
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(12.0), "12");
    }

    #[test]
    fn utc_date_is_well_formed() {
        let now = utc_now();
        assert_eq!(now.len(), "2025-01-01 00:00:00 UTC".len(), "{now}");
        assert!(now.starts_with("20"), "{now}");
    }
}
