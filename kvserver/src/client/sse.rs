//! Reading Server-Sent Events off a byte stream: what the watch client reads,
//! and what a node reads when it relays part of a watch from another node
//! (`crate::api::watch`). Only the fields the watch stream uses: `event`,
//! `data` and `id`; comment lines (keep-alives) are skipped.

/// One event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `message` unless the event names its type.
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// Bytes in, whole events out. Holds at most one event's worth of bytes past
/// what was read out, bounded by the caller's `max` (a peer that never ends an
/// event cannot grow it without limit).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: String,
}

/// The buffer passed its limit without an event ending.
#[derive(Debug, thiserror::Error)]
#[error("an event passed {0} bytes without ending")]
pub struct EventTooLarge(pub usize);

impl SseParser {
    /// Adds `bytes`; refuses them once more than `max` bytes wait unparsed.
    pub fn push(&mut self, bytes: &[u8], max: usize) -> Result<(), EventTooLarge> {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        if self.buf.len() > max && !self.buf.contains("\n\n") {
            return Err(EventTooLarge(max));
        }
        Ok(())
    }

    /// Forgets what was pushed (a new connection).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// The next whole event, if one has arrived.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buf.find("\n\n")?;
            let block: String = self.buf.drain(..end + 2).collect();
            let mut ev = SseEvent {
                event: "message".into(),
                ..SseEvent::default()
            };
            let mut any = false;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    ev.event = v.trim().to_string();
                    any = true;
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !ev.data.is_empty() {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    any = true;
                } else if let Some(v) = line.strip_prefix("id:") {
                    ev.id = Some(v.trim().to_string());
                }
            }
            if any {
                return Some(ev);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_across_chunks_and_keep_alives_skipped() {
        let mut p = SseParser::default();
        p.push(b": keep-alive\n\nevent: put\ndata: {\"a\"", 1 << 20)
            .expect("valid");
        assert_eq!(p.next_event(), None);
        p.push(b":1}\nid: 0:4\n\nevent: dropped\ndata: x\n\n", 1 << 20)
            .expect("valid");
        let e = p.next_event().expect("valid");
        assert_eq!(
            (e.event.as_str(), e.data.as_str(), e.id.as_deref()),
            ("put", "{\"a\":1}", Some("0:4"))
        );
        assert_eq!(p.next_event().expect("valid").event, "dropped");
        assert_eq!(p.next_event(), None);
    }

    #[test]
    fn an_event_that_never_ends_is_refused() {
        let mut p = SseParser::default();
        assert!(p.push(&[b'x'; 100], 64).is_err());
    }
}
