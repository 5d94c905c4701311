//! Query time ranges: [`TimeSpec`] (what the caller asked: the last M minutes, or an
//! interval in ms) <-> [`wire::TimeRange`], its resolution to a [`MinuteRange`], and
//! [`MinuteRange`] <-> [`wire::Interval`] for the resolved range a response reports.
//!
//! Resolution rounds outward: an interval `[from_ms, to_ms)` becomes the minutes from the
//! one containing `from_ms` up to the one containing the last requested millisecond, so
//! every requested millisecond is counted and the response states exactly what was
//! summed. An empty interval stays empty. "Last M minutes" ends with the serving node's
//! current minute, which the caller passes in: resolution reads no clock itself.

use crate::model::{InvalidInput, Minute, MinuteRange, MS_PER_MINUTE};
use crate::wire;

use super::timestamp::check_timestamp_ms;

/// The longest "last M minutes" window: 366 days.
pub const MAX_LAST_MINUTES: u32 = 366 * 24 * 60;

/// The time range of a query as the caller gave it, validated: `last` within
/// 1..=[`MAX_LAST_MINUTES`], interval ends within the RFC 3339 years and `to >= from`.
/// Build it with [`TimeSpec::last`], [`TimeSpec::between`] or from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSpec {
    /// The last `minutes` minutes, ending with (and including) the current minute.
    Last {
        /// How many minutes.
        minutes: u32,
    },
    /// The half-open interval `[from_ms, to_ms)`, ms since the epoch.
    Between {
        /// First millisecond included.
        from_ms: i64,
        /// First millisecond excluded.
        to_ms: i64,
    },
}

impl TimeSpec {
    /// The last `minutes` minutes; an error unless 1..=[`MAX_LAST_MINUTES`].
    pub fn last(minutes: u32) -> Result<Self, InvalidInput> {
        const FIELD: &str = "range.last_minutes";
        if minutes == 0 {
            return Err(InvalidInput::Missing { field: FIELD });
        }
        if minutes > MAX_LAST_MINUTES {
            return Err(InvalidInput::Malformed {
                field: FIELD,
                reason: format!(
                    "{minutes} is more than the limit of {MAX_LAST_MINUTES} (366 days)"
                ),
            });
        }
        Ok(TimeSpec::Last { minutes })
    }

    /// The interval `[from_ms, to_ms)`; an error if an end is outside the years 0000 to
    /// 9999 or `to_ms < from_ms`.
    pub fn between(from_ms: i64, to_ms: i64) -> Result<Self, InvalidInput> {
        let from_ms = check_timestamp_ms("range.between.from_ms", from_ms)?;
        let to_ms = check_timestamp_ms("range.between.to_ms", to_ms)?;
        if to_ms < from_ms {
            return Err(InvalidInput::Malformed {
                field: "range.between",
                reason: format!("to_ms ({to_ms}) is before from_ms ({from_ms})"),
            });
        }
        Ok(TimeSpec::Between { from_ms, to_ms })
    }

    /// Checks the rules again, for a value built from the public variants directly.
    pub fn validate(self) -> Result<Self, InvalidInput> {
        match self {
            TimeSpec::Last { minutes } => TimeSpec::last(minutes),
            TimeSpec::Between { from_ms, to_ms } => TimeSpec::between(from_ms, to_ms),
        }
    }

    /// The minutes to sum, given the serving node's clock (`now_ms`, used only by
    /// [`TimeSpec::Last`]). Intervals round outward to whole minutes.
    pub fn resolve(self, now_ms: i64) -> Result<MinuteRange, InvalidInput> {
        match self.validate()? {
            TimeSpec::Last { minutes } => {
                let now_ms = check_timestamp_ms("now", now_ms)?;
                Ok(MinuteRange::last(minutes, Minute::of_ms(now_ms)))
            }
            TimeSpec::Between { from_ms, to_ms } => {
                let from = Minute::of_ms(from_ms);
                let to = if to_ms == from_ms {
                    from
                } else {
                    // Round up: the minute after the one holding the last requested ms.
                    Minute(Minute::of_ms(to_ms - 1).0 + 1)
                };
                MinuteRange::new(from, to)
            }
        }
    }
}

impl TryFrom<wire::TimeRange> for TimeSpec {
    type Error = InvalidInput;

    fn try_from(w: wire::TimeRange) -> Result<Self, InvalidInput> {
        match w.range {
            None => Err(InvalidInput::Missing { field: "range" }),
            Some(wire::time_range::Range::LastMinutes(m)) => TimeSpec::last(m),
            Some(wire::time_range::Range::Between(i)) => TimeSpec::between(i.from_ms, i.to_ms),
        }
    }
}

impl TryFrom<Option<wire::TimeRange>> for TimeSpec {
    type Error = InvalidInput;

    /// For the `range` field of a request, where absence is an error.
    fn try_from(w: Option<wire::TimeRange>) -> Result<Self, InvalidInput> {
        w.ok_or(InvalidInput::Missing { field: "range" })
            .and_then(TimeSpec::try_from)
    }
}

impl From<TimeSpec> for wire::TimeRange {
    fn from(t: TimeSpec) -> Self {
        let range = match t {
            TimeSpec::Last { minutes } => wire::time_range::Range::LastMinutes(minutes),
            TimeSpec::Between { from_ms, to_ms } => {
                wire::time_range::Range::Between(wire::Interval { from_ms, to_ms })
            }
        };
        wire::TimeRange { range: Some(range) }
    }
}

impl From<MinuteRange> for wire::Interval {
    /// The resolved range as minute-aligned milliseconds.
    fn from(r: MinuteRange) -> Self {
        wire::Interval {
            from_ms: r.from.start_ms(),
            to_ms: r.to.start_ms(),
        }
    }
}

impl TryFrom<wire::Interval> for MinuteRange {
    type Error = InvalidInput;

    /// A resolved range from a response: both ends must be on minute boundaries.
    fn try_from(i: wire::Interval) -> Result<Self, InvalidInput> {
        let minute = |field: &'static str, ms: i64| {
            let ms = check_timestamp_ms(field, ms)?;
            if ms.rem_euclid(MS_PER_MINUTE) == 0 {
                Ok(Minute::of_ms(ms))
            } else {
                Err(InvalidInput::Malformed {
                    field,
                    reason: format!("{ms} is not on a minute boundary"),
                })
            }
        };
        MinuteRange::new(
            minute("range.from_ms", i.from_ms)?,
            minute("range.to_ms", i.to_ms)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_720_483_200_000; // 2024-07-09T00:00:00Z, a minute boundary
    const M0: i64 = T0 / MS_PER_MINUTE;

    fn resolved(spec: TimeSpec, now_ms: i64) -> (i64, i64) {
        let r = spec.resolve(now_ms).expect("valid");
        (r.from.0 - M0, r.to.0 - M0)
    }

    #[test]
    fn last_m_minutes_ends_with_the_current_minute() {
        let spec = TimeSpec::last(5).expect("valid");
        assert_eq!(resolved(spec, T0 + 30_000), (-4, 1));
        assert_eq!(resolved(TimeSpec::last(1).expect("valid"), T0), (0, 1));
    }

    #[test]
    fn intervals_round_outward_to_whole_minutes() {
        let between = |f, t| TimeSpec::between(T0 + f, T0 + t).expect("valid");
        assert_eq!(resolved(between(0, 5 * 60_000), 0), (0, 5), "aligned stays");
        assert_eq!(resolved(between(30_000, 5 * 60_000 + 1), 0), (0, 6));
        assert_eq!(resolved(between(-1, 1), 0), (-1, 1));
        assert_eq!(
            resolved(between(30_000, 30_000), 0),
            (0, 0),
            "empty stays empty"
        );
        assert_eq!(resolved(between(30_000, 30_001), 0), (0, 1));
    }

    #[test]
    fn last_minutes_must_be_one_to_a_year() {
        assert_eq!(
            TimeSpec::last(0),
            Err(InvalidInput::Missing {
                field: "range.last_minutes"
            })
        );
        assert!(TimeSpec::last(MAX_LAST_MINUTES).is_ok());
        assert_eq!(
            TimeSpec::last(MAX_LAST_MINUTES + 1)
                .expect_err("too long")
                .to_string(),
            "range.last_minutes: 527041 is more than the limit of 527040 (366 days)"
        );
    }

    #[test]
    fn intervals_must_not_end_before_they_start() {
        assert_eq!(
            TimeSpec::between(T0, T0 - 1)
                .expect_err("reversed")
                .to_string(),
            format!("range.between: to_ms ({}) is before from_ms ({T0})", T0 - 1)
        );
        assert_eq!(
            TimeSpec::between(i64::MIN, T0)
                .expect_err("out of range")
                .to_string(),
            format!(
                "range.between.from_ms: {} ms is outside the years 0000 to 9999",
                i64::MIN
            )
        );
        let forged = TimeSpec::Between {
            from_ms: T0,
            to_ms: T0 - 60_000,
        };
        assert!(forged.resolve(T0).is_err(), "resolve re-validates");
        assert!(TimeSpec::Last { minutes: 0 }.resolve(T0).is_err());
        assert!(TimeSpec::last(1).expect("valid").resolve(i64::MAX).is_err());
    }

    #[test]
    fn time_ranges_roundtrip_through_the_wire() {
        for spec in [
            TimeSpec::last(60).expect("valid"),
            TimeSpec::between(T0, T0 + 1).expect("valid"),
        ] {
            assert_eq!(TimeSpec::try_from(wire::TimeRange::from(spec)), Ok(spec));
            assert_eq!(
                TimeSpec::try_from(Some(wire::TimeRange::from(spec))),
                Ok(spec)
            );
        }
        assert_eq!(
            TimeSpec::try_from(wire::TimeRange { range: None }),
            Err(InvalidInput::Missing { field: "range" })
        );
        assert_eq!(
            TimeSpec::try_from(None::<wire::TimeRange>),
            Err(InvalidInput::Missing { field: "range" })
        );
    }

    #[test]
    fn resolved_ranges_roundtrip_and_must_be_aligned() {
        let r = MinuteRange::new(Minute(M0), Minute(M0 + 10)).expect("valid");
        let i = wire::Interval::from(r);
        assert_eq!((i.from_ms, i.to_ms), (T0, T0 + 600_000));
        assert_eq!(MinuteRange::try_from(i), Ok(r));
        let err = MinuteRange::try_from(wire::Interval {
            from_ms: T0 + 1,
            to_ms: T0 + 60_000,
        })
        .expect_err("unaligned");
        assert_eq!(
            err.to_string(),
            format!("range.from_ms: {} is not on a minute boundary", T0 + 1)
        );
        assert!(MinuteRange::try_from(wire::Interval {
            from_ms: T0 + 60_000,
            to_ms: T0,
        })
        .is_err());
    }
}
