//! Log offsets: `<tx>_<op>`, ordered by (tx, op).

use std::fmt;
use std::str::FromStr;

/// A position in a shape log. `tx` is the commit LSN of a transaction (0 for the
/// virtual snapshot offsets) and `op` the position inside it; `u64::MAX` stands for
/// `inf`, after every op of that transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogOffset {
    pub tx: u64,
    pub op: u64,
}

impl LogOffset {
    pub const INF_OP: u64 = u64::MAX;
    /// The end of the initial snapshot when nothing has been replicated yet (`0_inf`).
    pub const SNAPSHOT_END: LogOffset = LogOffset {
        tx: 0,
        op: Self::INF_OP,
    };
    /// The offset a client is given after the first snapshot chunk (`0_0`).
    pub const FIRST_CHUNK: LogOffset = LogOffset { tx: 0, op: 0 };

    pub fn new(tx: u64, op: u64) -> Self {
        LogOffset { tx, op }
    }
}

impl fmt::Display for LogOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.op == Self::INF_OP {
            write!(f, "{}_inf", self.tx)
        } else {
            write!(f, "{}_{}", self.tx, self.op)
        }
    }
}

/// The `offset` request parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOffset {
    /// `-1`: from the start, the snapshot first.
    BeforeAll,
    /// `now`: skip history, only the current end of the log.
    Now,
    At(LogOffset),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("has invalid format")]
pub struct InvalidOffset;

impl FromStr for RequestOffset {
    type Err = InvalidOffset;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "-1" => return Ok(RequestOffset::BeforeAll),
            "now" => return Ok(RequestOffset::Now),
            _ => {}
        }
        let (tx, op) = s.split_once('_').ok_or(InvalidOffset)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(tx) {
            return Err(InvalidOffset);
        }
        let tx = tx.parse::<u64>().map_err(|_| InvalidOffset)?;
        let op = if op == "inf" {
            LogOffset::INF_OP
        } else if digits(op) {
            op.parse::<u64>().map_err(|_| InvalidOffset)?
        } else {
            return Err(InvalidOffset);
        };
        Ok(RequestOffset::At(LogOffset { tx, op }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_through_text() {
        for s in ["0_0", "0_inf", "26800584_4", "1_inf"] {
            let RequestOffset::At(o) = s.parse().unwrap() else {
                panic!("{s} did not parse as an offset");
            };
            assert_eq!(o.to_string(), s);
        }
    }

    #[test]
    fn special_offsets_parse() {
        assert_eq!("-1".parse(), Ok(RequestOffset::BeforeAll));
        assert_eq!("now".parse(), Ok(RequestOffset::Now));
    }

    #[test]
    fn malformed_offsets_are_rejected() {
        for s in ["abc", "1", "_1", "1_", "-2_0", "1_-1", "1_x", ""] {
            assert_eq!(s.parse::<RequestOffset>(), Err(InvalidOffset), "{s}");
        }
    }

    #[test]
    fn offsets_order_by_tx_then_op_with_inf_last() {
        assert!(LogOffset::new(1, 5) < LogOffset::new(2, 0));
        assert!(LogOffset::new(2, 100) < LogOffset::new(2, LogOffset::INF_OP));
        assert!(LogOffset::SNAPSHOT_END < LogOffset::new(1, 0));
        assert!(LogOffset::FIRST_CHUNK < LogOffset::SNAPSHOT_END);
    }
}
