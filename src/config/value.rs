//! Typed values of config keys and flags.
//!
//! Contract: each type here reads from a flag's text (`FromStr`, which clap uses) and from a TOML
//! value (`Deserialize`), and checks its range while reading. A value out of range is therefore
//! refused where it is read, naming the allowed range: on the command line in clap's format
//! (`invalid value '0' for '--retries <N>': 0 is not in 1..=1000`), in the file with its key and
//! line (see [`super::file`]). Numbers in the file must be TOML integers (`max_blksize = "1468"`
//! is refused); nothing here does I/O.

use crate::engine::workers::BackendChoice;
use serde::de::{self, Deserializer, SeqAccess, Unexpected, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// An integer in `LO..=HI`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ranged<const LO: u64, const HI: u64>(u64);

impl<const LO: u64, const HI: u64> Ranged<LO, HI> {
    /// `None` outside `LO..=HI`.
    pub const fn new(v: u64) -> Option<Self> {
        if v >= LO && v <= HI {
            Some(Ranged(v))
        } else {
            None
        }
    }

    /// A value known to be in range (a default); a constant outside it fails to compile where it
    /// is evaluated in a `const`, and panics elsewhere.
    pub const fn of(v: u64) -> Self {
        match Self::new(v) {
            Some(r) => r,
            None => panic!("Ranged::of: value out of range"),
        }
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The value as a `usize` (the bounds used in this crate fit).
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    fn expecting() -> String {
        format!("an integer in {LO}..={HI}")
    }
}

impl<const LO: u64, const HI: u64> fmt::Display for Ranged<LO, HI> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<const LO: u64, const HI: u64> FromStr for Ranged<LO, HI> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: u64 = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not {}", Self::expecting()))?;
        // The wording of clap's own range check, which these flags used before.
        Self::new(v).ok_or_else(|| format!("{v} is not in {LO}..={HI}"))
    }
}

impl<'de, const LO: u64, const HI: u64> Deserialize<'de> for Ranged<LO, HI> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const LO: u64, const HI: u64>;
        impl<const LO: u64, const HI: u64> Visitor<'_> for V<LO, HI> {
            type Value = Ranged<LO, HI>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&Ranged::<LO, HI>::expecting())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ranged::new(v).ok_or_else(|| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .ok()
                    .and_then(Ranged::new)
                    .ok_or_else(|| E::invalid_value(Unexpected::Signed(v), &self))
            }
        }
        d.deserialize_u64(V::<LO, HI>)
    }
}

/// A duration of `UNIT_MS` milliseconds per unit, within `LO..=HI` units. A bare number counts
/// in the key's unit (seconds for `timeout`, milliseconds for `min_rto`, as these keys have
/// always been); a string with a unit says its own: `"200ms"`, `"3s"`, `"5m"`, `"1h"`, `"2d"`.
/// The value must be a whole number of the key's unit (`timeout = "1500ms"` is refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur<const UNIT_MS: u64, const LO: u64, const HI: u64>(Ranged<LO, HI>);

/// A duration counted in seconds, `LO..=HI` of them.
pub type Secs<const LO: u64, const HI: u64> = Dur<1000, LO, HI>;
/// A duration counted in milliseconds, `LO..=HI` of them.
pub type Millis<const LO: u64, const HI: u64> = Dur<1, LO, HI>;

impl<const UNIT_MS: u64, const LO: u64, const HI: u64> Dur<UNIT_MS, LO, HI> {
    /// `units` of the key's unit; `None` out of range.
    pub const fn new(units: u64) -> Option<Self> {
        match Ranged::new(units) {
            Some(r) => Some(Dur(r)),
            None => None,
        }
    }

    /// A value known to be in range (a default; see [`Ranged::of`]).
    pub const fn of(units: u64) -> Self {
        Dur(Ranged::of(units))
    }

    pub fn get(self) -> Duration {
        Duration::from_millis(self.0.get() * UNIT_MS)
    }

    fn unit() -> &'static str {
        if UNIT_MS == 1000 {
            "s"
        } else {
            "ms"
        }
    }

    fn expecting() -> String {
        let u = Self::unit();
        let range = if HI >= u32::MAX as u64 {
            String::new()
        } else {
            format!(" in {LO}{u}..={HI}{u}")
        };
        format!("a duration{range} (an integer counts in {u}; or a string such as \"200ms\", \"3s\", \"5m\", \"1h\")")
    }

    /// `ms` milliseconds, checked to be whole units within the range.
    fn from_millis(ms: u64, shown: &str) -> Result<Self, String> {
        let u = Self::unit();
        if ms % UNIT_MS != 0 {
            return Err(format!("{shown} is not a whole number of {}", unit_name(u)));
        }
        Self::new(ms / UNIT_MS).ok_or_else(|| format!("{shown} is not in {LO}{u}..={HI}{u}"))
    }

    /// A string: a number (the key's unit) or a number with a unit.
    fn parse_text(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("{s:?} is not {}", Self::expecting());
        let n: u64 = num.parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "" => UNIT_MS,
            "ms" => 1,
            "s" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let ms = n.checked_mul(per).ok_or_else(bad)?;
        Self::from_millis(ms, t)
    }
}

fn unit_name(u: &str) -> &'static str {
    if u == "s" {
        "seconds"
    } else {
        "milliseconds"
    }
}

impl<const UNIT_MS: u64, const LO: u64, const HI: u64> fmt::Display for Dur<UNIT_MS, LO, HI> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.0, Self::unit())
    }
}

impl<const UNIT_MS: u64, const LO: u64, const HI: u64> FromStr for Dur<UNIT_MS, LO, HI> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse_text(s)
    }
}

impl<'de, const UNIT_MS: u64, const LO: u64, const HI: u64> Deserialize<'de>
    for Dur<UNIT_MS, LO, HI>
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const UNIT_MS: u64, const LO: u64, const HI: u64>;
        impl<const UNIT_MS: u64, const LO: u64, const HI: u64> Visitor<'_> for V<UNIT_MS, LO, HI> {
            type Value = Dur<UNIT_MS, LO, HI>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&Dur::<UNIT_MS, LO, HI>::expecting())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Dur::new(v).ok_or_else(|| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .ok()
                    .and_then(Dur::new)
                    .ok_or_else(|| E::invalid_value(Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let t = v.trim();
                if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                    // In the file a number is an integer; a string names its unit.
                    return Err(E::custom(format!(
                        "a duration written as a string needs a unit (\"{t}{u}\"), or write the integer {t} ({u})",
                        u = Dur::<UNIT_MS, LO, HI>::unit()
                    )));
                }
                Dur::parse_text(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V::<UNIT_MS, LO, HI>)
    }
}

/// `deserialize_with` for `Option<Duration>` fields counted in seconds with no range of their own
/// (the `[dhcp]` lease keys, whose range depends on the mode and is checked by validation).
pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Secs::<0, { u32::MAX as u64 }>::deserialize(d).map(Dur::get)
}

/// `deserialize_with` for an optional value read from a TOML string by its `FromStr`
/// (`port_range = "5000:5100"`, `multicast_groups = "239.255.42.0/24"`).
pub fn parsed<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(de::Error::custom)
}

/// `deserialize_with` for a list of values read from TOML strings by their `FromStr`: an array
/// of strings, or one string for a list of one (`mtftp = "boot.wim@239.255.1.1:3001"`).
pub fn parsed_list<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    list_of(d, |s: &str| s.parse::<T>().map_err(|e| e.to_string())).map(Some)
}

/// `deserialize_with` for `listen`: one `ADDR:PORT` or a list of them.
pub fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<SocketAddr>>, D::Error> {
    list_of(d, socket_addr).map(Some)
}

fn list_of<'de, D, T>(d: D, parse: fn(&str) -> Result<T, String>) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<T>(fn(&str) -> Result<T, String>, PhantomData<T>);
    impl<'de, T> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            (self.0)(v).map(|x| vec![x]).map_err(E::custom)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push((self.0)(&s).map_err(de::Error::custom)?);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V(parse, PhantomData))
}

/// `ADDR:PORT`, with a hint when the port is missing (`--listen 127.0.0.1`).
pub fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    t.parse().map_err(|_| {
        if t.parse::<std::net::IpAddr>().is_ok() {
            let shown = if t.contains(':') {
                format!("[{t}]")
            } else {
                t.to_owned()
            };
            format!("{t:?} has no port: write ADDR:PORT, e.g. {shown}:69")
        } else {
            format!("{t:?} is not ADDR:PORT (e.g. 0.0.0.0:69 or [::]:69)")
        }
    })
}

/// `--metrics` / `[metrics] listen`: `ADDR:PORT`, or a port alone (then on 127.0.0.1: the
/// listener is reachable by anyone who can reach the address, so wide binding is explicit).
pub fn metrics_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Ok(port) = t.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some(port) = t.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    t.parse().map_err(|_| {
        format!("{t:?} is not ADDR:PORT or PORT (e.g. 9100 for 127.0.0.1:9100, or 0.0.0.0:9100)")
    })
}

/// `--io-backend` / `io_backend`: `auto`, `uring` or `fallback`.
impl clap::ValueEnum for BackendChoice {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            BackendChoice::Auto,
            BackendChoice::Uring,
            BackendChoice::Fallback,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self {
            BackendChoice::Auto => {
                PossibleValue::new("auto").help("io_uring when it works here, else epoll")
            }
            BackendChoice::Uring => PossibleValue::new("uring").help("io_uring, or fail"),
            BackendChoice::Fallback => PossibleValue::new("fallback").help("epoll"),
        })
    }
}

impl<'de> Deserialize<'de> for BackendChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        value_enum(d)
    }
}

/// Deserialize a clap `ValueEnum` from its name, with serde's "unknown variant" message.
pub fn value_enum<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: clap::ValueEnum + 'static,
{
    let s = String::deserialize(d)?;
    T::value_variants()
        .iter()
        .find(|v| {
            v.to_possible_value()
                .is_some_and(|p| p.get_name().eq_ignore_ascii_case(&s))
        })
        .cloned()
        .ok_or_else(|| {
            let names: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .map(|p| format!("`{}`", p.get_name()))
                .collect();
            de::Error::custom(format!(
                "unknown variant `{s}`, expected one of {}",
                names.join(", ")
            ))
        })
}

/// The name a `ValueEnum` value is written with (`uring`).
pub fn value_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        n: Option<Ranged<8, 65464>>,
        s: Option<Secs<1, 255>>,
        ms: Option<Millis<1, 60000>>,
        #[serde(default, deserialize_with = "listen")]
        listen: Option<Vec<SocketAddr>>,
        b: Option<BackendChoice>,
    }

    fn doc(t: &str) -> Result<Doc, String> {
        toml::from_str(t).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn ranged_from_text_and_toml() {
        assert_eq!("1468".parse::<Ranged<8, 65464>>(), Ok(Ranged(1468)));
        assert_eq!(
            "7".parse::<Ranged<8, 65464>>(),
            Err("7 is not in 8..=65464".to_owned())
        );
        assert!("x"
            .parse::<Ranged<8, 65464>>()
            .unwrap_err()
            .contains("8..=65464"));
        assert_eq!(doc("n = 1468").unwrap().n, Some(Ranged(1468)));
        let e = doc("n = 70000").unwrap_err();
        assert!(e.contains("70000") && e.contains("8..=65464"), "{e}");
        let e = doc("n = -1").unwrap_err();
        assert!(e.contains("-1") && e.contains("8..=65464"), "{e}");
        let e = doc("n = \"1468\"").unwrap_err();
        assert!(e.contains("string") && e.contains("8..=65464"), "{e}");
    }

    #[test]
    fn durations_count_in_the_keys_unit_or_say_theirs() {
        assert_eq!(
            "3".parse::<Secs<1, 255>>().unwrap().get(),
            Duration::from_secs(3)
        );
        assert_eq!(
            "2m".parse::<Secs<1, 255>>().unwrap().get(),
            Duration::from_secs(120)
        );
        assert_eq!(
            "1s".parse::<Millis<1, 60000>>().unwrap().get(),
            Duration::from_millis(1000)
        );
        assert_eq!(
            "200".parse::<Millis<1, 60000>>().unwrap().get(),
            Duration::from_millis(200)
        );
        assert!("1500ms"
            .parse::<Secs<1, 255>>()
            .unwrap_err()
            .contains("whole number of seconds"));
        assert!("256"
            .parse::<Secs<1, 255>>()
            .unwrap_err()
            .contains("1s..=255s"));
        assert!("3 fortnights".parse::<Secs<1, 255>>().is_err());
        assert_eq!(
            doc("s = 3").unwrap().s.unwrap().get(),
            Duration::from_secs(3)
        );
        assert_eq!(
            doc("s = \"4s\"").unwrap().s.unwrap().get(),
            Duration::from_secs(4)
        );
        assert_eq!(
            doc("ms = \"2s\"").unwrap().ms.unwrap().get(),
            Duration::from_secs(2)
        );
        let e = doc("s = \"3\"").unwrap_err();
        assert!(e.contains("needs a unit"), "{e}");
        let e = doc("s = 300").unwrap_err();
        assert!(e.contains("1s..=255s"), "{e}");
        let e = doc("s = true").unwrap_err();
        assert!(e.contains("boolean") && e.contains("duration"), "{e}");
        assert_eq!(Secs::<1, 255>::of(3).to_string(), "3s");
    }

    #[test]
    fn lists_take_one_or_many() {
        let one = doc("listen = \"127.0.0.1:69\"").unwrap().listen.unwrap();
        assert_eq!(one, vec!["127.0.0.1:69".parse().unwrap()]);
        let two = doc("listen = [\"127.0.0.1:69\", \"[::1]:69\"]")
            .unwrap()
            .listen
            .unwrap();
        assert_eq!(two.len(), 2);
        let e = doc("listen = [\"127.0.0.1\"]").unwrap_err();
        assert!(e.contains("no port") && e.contains("127.0.0.1:69"), "{e}");
        assert!(socket_addr("::1").unwrap_err().contains("[::1]:69"));
    }

    #[test]
    fn enums_by_name() {
        assert_eq!(doc("b = \"uring\"").unwrap().b, Some(BackendChoice::Uring));
        let e = doc("b = \"urin\"").unwrap_err();
        assert!(e.contains("urin") && e.contains("fallback"), "{e}");
        assert_eq!(value_name(&BackendChoice::Fallback), "fallback");
    }
}

/// `--rate-limit IFACE=RATE`: an operator cap on the DATA the server sends out of one interface,
/// in bit/s on the wire (`400M`, `1G`; see [`Rate`](crate::proto::cc::Rate)'s parser). The
/// interface is checked to exist at start and by `ringboot check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub iface: String,
    pub rate: crate::proto::cc::Rate,
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (iface, rate) = s.split_once('=').ok_or_else(|| {
            format!("'{s}' is not IFACE=RATE (e.g. eth0=400M: at most 400 Mbit/s out of eth0)")
        })?;
        let iface = iface.trim();
        if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ']) {
            return Err(format!("'{iface}' is not an interface name (e.g. eth0)"));
        }
        let rate = rate.parse().map_err(|e| format!("{e}"))?;
        Ok(RateLimit {
            iface: iface.to_string(),
            rate,
        })
    }
}
