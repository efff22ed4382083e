//! Valkey streams as event logs, shared by the spoke's and the hub's: entry ids, and the
//! retention script that records what it removed.
//!
//! Retention trims with this script, never with `XADD MAXLEN`, so that the newest id it
//! removed is recorded in a marker key: a reader whose cursor is before the marker learns
//! that it missed events instead of silently skipping them. Nothing here talks to Valkey.

use std::fmt;
use std::str::FromStr;

/// A Valkey stream entry id, `<ms>-<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub ms: u64,
    pub n: u64,
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.n)
    }
}

impl FromStr for EntryId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an event cursor");
        let (ms, n) = s.split_once('-').ok_or_else(bad)?;
        Ok(EntryId {
            ms: ms.parse().map_err(|_| bad())?,
            n: n.parse().map_err(|_| bad())?,
        })
    }
}

/// Checks a log's retention settings (`[events] retain_max`, `retain_ms` in spoke.toml and
/// hub.toml); on error, the key and what is wrong with it.
pub fn check_retention(max: u64, ms: u64) -> Result<(), (&'static str, &'static str)> {
    if !(1_000..=100_000_000).contains(&max) {
        return Err(("retain_max", "must be between 1000 and 100000000"));
    }
    if !(60_000..=365 * 24 * 3_600_000).contains(&ms) {
        return Err((
            "retain_ms",
            "must be between 60000 (a minute) and 31536000000 (a year)",
        ));
    }
    Ok(())
}

/// Retention of a stream. KEYS: the stream, its trimmed marker. ARGV: most entries to keep,
/// the oldest id to keep by age (`<ms>-0`), most entries removed by count in one call.
/// Removes entries beyond the count and older than the age, records the newest id removed
/// in the marker, and returns how many were removed.
pub const TRIM_SCRIPT: &str = r"
local function parse(id)
  local ms, n = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(n)
end
local function after(a, b)
  local am, an = parse(a)
  local bm, bn = parse(b)
  return am > bm or (am == bm and an > bn)
end
local last = nil
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[1])
if excess > 0 then
  local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', math.min(excess, tonumber(ARGV[3])))
  if #old > 0 then last = old[#old][1] end
end
local aged = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[2], '-', 'COUNT', 1)
if aged[1] and (not last or after(aged[1][1], last)) then last = aged[1][1] end
if not last then return 0 end
local ms, n = parse(last)
local removed = redis.call('XTRIM', KEYS[1], 'MINID', string.format('%.0f-%.0f', ms, n + 1))
local previous = redis.call('GET', KEYS[2])
if not previous or after(last, previous) then redis.call('SET', KEYS[2], last) end
return removed
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_parse_and_order_numerically() {
        let a: EntryId = "9-10".parse().unwrap();
        let b: EntryId = "10-2".parse().unwrap();
        assert!(a < b);
        assert!("9-2".parse::<EntryId>().unwrap() < a);
        assert_eq!(a.to_string(), "9-10");
        for bad in ["", "9", "9-", "-1", "a-b", "9-1-2"] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn retention_bounds_name_the_key() {
        assert!(check_retention(1_000, 60_000).is_ok());
        assert_eq!(check_retention(999, 60_000).unwrap_err().0, "retain_max");
        assert_eq!(check_retention(1_000, 59_999).unwrap_err().0, "retain_ms");
    }
}
