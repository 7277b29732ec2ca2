//! Query-string parameters with Consul's conventions: a flag is on when present
//! (`?recurse`, whatever its value), numbers are decimal `u64`s, durations use Go's syntax
//! ("10s", "5m", "1m30s", "100ms"), and a bad value is a 400 before anything happens.

use std::time::Duration;

use cairn_net::rpc::message::{Consistency, ReadOpts};

use super::reply::Reply;
use super::Ctx;

/// Consul's `default_query_time`: how long a blocking query waits when it gives an
/// `index` but no `wait` (or a zero one).
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Consul's `max_query_time`: the longest wait asked for is cut to this.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(600);

/// The decoded query string of one request.
#[derive(Debug, Default, Clone)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        Query {
            pairs: raw
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        }
    }

    /// Whether a flag parameter is present (Consul ignores its value).
    pub fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == name)
    }

    /// The first value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated parameter, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// An optional unsigned number; a value that is not one is a 400 naming it.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, Reply> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                Reply::bad_request(format!(
                    "Invalid {name}: {v:?} is not an unsigned decimal number"
                ))
            }),
        }
    }

    /// A boolean parameter as Consul reads one (Go's `strconv.ParseBool`): absent is
    /// false, present without a value true; another value is a 400 naming it.
    pub fn bool_flag(&self, name: &str) -> Result<bool, Reply> {
        match self.get(name) {
            None => Ok(false),
            Some("" | "1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(_) => Err(Reply::bad_request(format!("Invalid value for {name}"))),
        }
    }

    /// `?pretty`: indented JSON.
    pub fn pretty(&self) -> bool {
        self.has("pretty")
    }

    /// The request's datacenter: empty (the local one) unless `?dc` names another.
    pub fn datacenter(&self, ctx: &Ctx) -> String {
        match self.get("dc") {
            Some(dc) if !dc.is_empty() && dc != ctx.datacenter => dc.to_string(),
            _ => String::new(),
        }
    }

    /// `?stale`, `?consistent`, `?index` and `?wait` as the options of a read.
    pub fn read_opts(&self) -> Result<ReadOpts, Reply> {
        let consistency = match (self.has("stale"), self.has("consistent")) {
            (true, true) => {
                return Err(Reply::bad_request(
                    "Cannot specify ?stale with ?consistent, conflicting semantics.",
                ))
            }
            (true, false) => Consistency::Stale,
            (false, true) => Consistency::Consistent,
            (false, false) => Consistency::Default,
        };
        let wait = match self.get("wait") {
            None => None,
            Some(w) => {
                Some(parse_go_duration(w).ok_or_else(|| Reply::bad_request("Invalid wait time"))?)
            }
        };
        let index = self
            .get("index")
            .map(|i| {
                i.parse::<u64>()
                    .map_err(|_| Reply::bad_request("Invalid index"))
            })
            .transpose()?
            .unwrap_or(0);
        // As Consul: a wait without an index does not block; an index without a wait
        // (or with a zero one) waits the default; longer waits are cut to the maximum.
        let wait_ms = if index == 0 {
            0
        } else {
            let w = match wait {
                Some(w) if !w.is_zero() => w.min(MAX_WAIT),
                _ => DEFAULT_WAIT,
            };
            w.as_millis() as u64
        };
        Ok(ReadOpts {
            consistency,
            index,
            wait_ms,
        })
    }
}

/// Go's `time.ParseDuration` for the non-negative durations a query can ask for: one or
/// more `<decimal><unit>` parts ("1m30s", "1.5s"), units ns, us (µs, μs), ms, s, m, h, or
/// a bare "0". `None` for anything else, negatives included.
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return None;
        }
        let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut part = int.checked_mul(unit_ns)?;
        // The fraction, digit by digit, to nanosecond precision (further digits drop).
        let mut scale = unit_ns;
        for d in frac.bytes() {
            scale /= 10;
            part = part.checked_add(u128::from(d - b'0') * scale)?;
        }
        total_ns = total_ns.checked_add(part)?;
        rest = after;
    }
    // Go's durations stop at about 292 years; so do these.
    let ns = u64::try_from(total_ns)
        .ok()
        .filter(|n| *n <= i64::MAX as u64)?;
    Some(Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_gos_parse_duration() {
        let ms = |s| parse_go_duration(s).map(|d| d.as_millis());
        assert_eq!(ms("10s"), Some(10_000));
        assert_eq!(ms("5m"), Some(300_000));
        assert_eq!(ms("100ms"), Some(100));
        assert_eq!(ms("1m30s"), Some(90_000));
        assert_eq!(ms("1.5s"), Some(1_500));
        assert_eq!(ms(".5s"), Some(500));
        assert_eq!(ms("1h"), Some(3_600_000));
        assert_eq!(ms("0"), Some(0));
        assert_eq!(ms("+2s"), Some(2_000));
        assert_eq!(
            parse_go_duration("1500us"),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(parse_go_duration("3µs"), Some(Duration::from_micros(3)));
        assert_eq!(parse_go_duration("7ns"), Some(Duration::from_nanos(7)));
        for bad in [
            "",
            "10",
            "xyz",
            "s",
            "1x",
            "-1s",
            "1..5s",
            ".s",
            "10 s",
            "99999999999h",
        ] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn flags_are_on_when_present_whatever_their_value() {
        let q = Query::parse(Some("recurse&keys=false&separator=%2F&raw="));
        assert!(q.has("recurse") && q.has("keys") && q.has("raw"));
        assert!(!q.has("cas"));
        assert_eq!(q.get("separator"), Some("/"));
    }

    #[test]
    fn a_number_that_is_not_one_is_a_400_naming_the_parameter() {
        let q = Query::parse(Some("cas=abc&flags=42"));
        assert_eq!(q.u64("flags"), Ok(Some(42)));
        assert_eq!(q.u64("absent"), Ok(None));
        let r = q.u64("cas").unwrap_err();
        assert_eq!(r.status, 400);
        assert!(String::from_utf8_lossy(&r.body).contains("Invalid cas"));
    }

    #[test]
    fn blocking_options_follow_consuls_defaults_and_caps() {
        let opts = |q| Query::parse(Some(q)).read_opts();
        assert_eq!(opts("").unwrap(), ReadOpts::default());
        // A wait alone does not block.
        assert_eq!(opts("wait=10s").unwrap().wait_ms, 0);
        let o = opts("index=7&wait=10s").unwrap();
        assert_eq!((o.index, o.wait_ms), (7, 10_000));
        assert_eq!(opts("index=7").unwrap().wait_ms, 300_000);
        assert_eq!(opts("index=7&wait=0s").unwrap().wait_ms, 300_000);
        assert_eq!(opts("index=7&wait=1h").unwrap().wait_ms, 600_000);
        assert_eq!(opts("stale").unwrap().consistency, Consistency::Stale);
        assert_eq!(
            opts("consistent").unwrap().consistency,
            Consistency::Consistent
        );
        for bad in [
            "wait=xyz&index=1",
            "index=abc",
            "index=-1",
            "stale&consistent",
        ] {
            assert_eq!(opts(bad).unwrap_err().status, 400, "{bad}");
        }
        let r = opts("index=1&wait=xyz").unwrap_err();
        assert_eq!(&r.body[..], b"Invalid wait time");
    }

    #[test]
    fn the_local_datacenter_is_sent_as_empty() {
        let ctx = Ctx::for_tests();
        assert_eq!(Query::parse(Some("dc=dc1")).datacenter(&ctx), "");
        assert_eq!(Query::parse(None).datacenter(&ctx), "");
        assert_eq!(Query::parse(Some("dc=eu")).datacenter(&ctx), "eu");
    }
}
