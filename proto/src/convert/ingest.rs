//! The answer to an ingest: [`Outcome`] / [`RejectReason`] <-> [`wire::EventResult`],
//! [`Tally`] <-> [`wire::Tally`], and [`ingest_response`], which assembles the response
//! from per-click results so the tally always agrees with them.
//!
//! A click that failed the edge check never reaches a Raft group; it is answered
//! `REJECTED` / `INVALID` with the validation error as its message, which is how one
//! malformed click leaves the rest of its batch untouched. Wire -> domain refuses
//! `UNSPECIFIED` and unknown enum values: a client must not mistake an answer it does not
//! understand for a count.

use crate::model::{InvalidInput, Outcome, RejectReason, Tally};
use crate::wire;

/// The outcome of a click that failed validation.
const INVALID: Outcome = Outcome::Rejected(RejectReason::Invalid);

impl From<RejectReason> for wire::RejectReason {
    fn from(r: RejectReason) -> Self {
        match r {
            RejectReason::FutureEvent => wire::RejectReason::FutureEvent,
            RejectReason::Invalid => wire::RejectReason::Invalid,
        }
    }
}

impl TryFrom<wire::RejectReason> for RejectReason {
    type Error = InvalidInput;

    fn try_from(r: wire::RejectReason) -> Result<Self, InvalidInput> {
        match r {
            wire::RejectReason::Unspecified => Err(InvalidInput::Missing {
                field: "reject_reason",
            }),
            wire::RejectReason::FutureEvent => Ok(RejectReason::FutureEvent),
            wire::RejectReason::Invalid => Ok(RejectReason::Invalid),
        }
    }
}

impl From<Outcome> for wire::Outcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Accepted => wire::Outcome::Accepted,
            Outcome::Duplicate => wire::Outcome::Duplicate,
            Outcome::Late => wire::Outcome::Late,
            Outcome::Rejected(_) => wire::Outcome::Rejected,
        }
    }
}

impl From<Outcome> for wire::EventResult {
    /// The result for an applied click. A rejection gets a generic message for its
    /// reason; a server with more detail may overwrite `message`.
    fn from(o: Outcome) -> Self {
        let (reject_reason, message) = match o {
            Outcome::Rejected(reason) => (wire::RejectReason::from(reason), reason_text(reason)),
            _ => (wire::RejectReason::Unspecified, ""),
        };
        wire::EventResult {
            outcome: wire::Outcome::from(o).into(),
            reject_reason: reject_reason.into(),
            message: message.to_owned(),
        }
    }
}

impl From<&InvalidInput> for wire::EventResult {
    /// The result for a click that failed validation: `REJECTED` / `INVALID`, the error
    /// (which names the field) as the message.
    fn from(e: &InvalidInput) -> Self {
        wire::EventResult {
            message: e.to_string(),
            ..wire::EventResult::from(INVALID)
        }
    }
}

impl TryFrom<&wire::EventResult> for Outcome {
    type Error = InvalidInput;

    /// The domain outcome of a result; its `message` is for humans and is not kept.
    fn try_from(r: &wire::EventResult) -> Result<Self, InvalidInput> {
        let outcome =
            wire::Outcome::try_from(r.outcome).map_err(|_| unknown("outcome", r.outcome))?;
        match outcome {
            wire::Outcome::Unspecified => Err(InvalidInput::Missing { field: "outcome" }),
            wire::Outcome::Accepted => Ok(Outcome::Accepted),
            wire::Outcome::Duplicate => Ok(Outcome::Duplicate),
            wire::Outcome::Late => Ok(Outcome::Late),
            wire::Outcome::Rejected => {
                let reason = wire::RejectReason::try_from(r.reject_reason)
                    .map_err(|_| unknown("reject_reason", r.reject_reason))?;
                Ok(Outcome::Rejected(RejectReason::try_from(reason)?))
            }
        }
    }
}

impl From<Tally> for wire::Tally {
    fn from(t: Tally) -> Self {
        wire::Tally {
            accepted: t.accepted,
            duplicate: t.duplicate,
            late: t.late,
            rejected: t.rejected,
        }
    }
}

impl From<wire::Tally> for Tally {
    fn from(t: wire::Tally) -> Self {
        Tally {
            accepted: t.accepted,
            duplicate: t.duplicate,
            late: t.late,
            rejected: t.rejected,
        }
    }
}

/// Builds the response to a batch from one entry per click, in request order: the
/// outcome decided at apply, or the validation error of a click that never reached a
/// group (answered `REJECTED` / `INVALID`). The tally is computed from the same entries.
pub fn ingest_response<I>(results: I) -> wire::IngestResponse
where
    I: IntoIterator<Item = Result<Outcome, InvalidInput>>,
{
    let mut tally = Tally::default();
    let results = results
        .into_iter()
        .map(|r| match r {
            Ok(outcome) => {
                tally.add(outcome);
                wire::EventResult::from(outcome)
            }
            Err(e) => {
                tally.add(INVALID);
                wire::EventResult::from(&e)
            }
        })
        .collect();
    wire::IngestResponse {
        results,
        tally: Some(tally.into()),
    }
}

fn reason_text(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::FutureEvent => {
            "event_time_ms is more than max_future_skew ahead of the leader's clock"
        }
        RejectReason::Invalid => "the click failed validation",
    }
}

fn unknown(field: &'static str, value: i32) -> InvalidInput {
    InvalidInput::Malformed {
        field,
        reason: format!("unknown value {value}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Outcome; 5] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::Late,
        Outcome::Rejected(RejectReason::FutureEvent),
        Outcome::Rejected(RejectReason::Invalid),
    ];

    #[test]
    fn every_outcome_roundtrips() {
        for o in ALL {
            let r = wire::EventResult::from(o);
            assert_eq!(Outcome::try_from(&r), Ok(o));
            assert_eq!(
                r.message.is_empty(),
                !matches!(o, Outcome::Rejected(_)),
                "only rejections carry a message: {o:?}"
            );
        }
    }

    #[test]
    fn tally_roundtrips() {
        let t = Tally {
            accepted: 1,
            duplicate: 2,
            late: 3,
            rejected: 4,
        };
        assert_eq!(Tally::from(wire::Tally::from(t)), t);
    }

    #[test]
    fn a_validation_error_becomes_rejected_invalid_with_its_message() {
        let e = InvalidInput::Missing { field: "ad_id" };
        let r = wire::EventResult::from(&e);
        assert_eq!(r.outcome(), wire::Outcome::Rejected);
        assert_eq!(r.reject_reason(), wire::RejectReason::Invalid);
        assert_eq!(r.message, "ad_id is required");
        assert_eq!(
            Outcome::try_from(&r),
            Ok(Outcome::Rejected(RejectReason::Invalid))
        );
    }

    #[test]
    fn the_response_keeps_order_and_tallies_every_click() {
        let resp = ingest_response([
            Ok(Outcome::Accepted),
            Err(InvalidInput::Missing { field: "ip" }),
            Ok(Outcome::Duplicate),
            Ok(Outcome::Accepted),
            Ok(Outcome::Rejected(RejectReason::FutureEvent)),
        ]);
        let outcomes: Vec<_> = resp
            .results
            .iter()
            .map(|r| Outcome::try_from(r).expect("known outcome"))
            .collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Accepted,
                Outcome::Rejected(RejectReason::Invalid),
                Outcome::Duplicate,
                Outcome::Accepted,
                Outcome::Rejected(RejectReason::FutureEvent),
            ]
        );
        assert_eq!(resp.results[1].message, "ip is required");
        let tally = Tally::from(resp.tally.expect("always set"));
        assert_eq!(
            tally,
            Tally {
                accepted: 2,
                duplicate: 1,
                late: 0,
                rejected: 2
            }
        );
    }

    #[test]
    fn unspecified_or_unknown_values_are_refused() {
        let r = |outcome: i32, reason: i32| wire::EventResult {
            outcome,
            reject_reason: reason,
            message: String::new(),
        };
        let err = |outcome, reason| {
            Outcome::try_from(&r(outcome, reason))
                .expect_err("refused")
                .to_string()
        };
        assert_eq!(err(0, 0), "outcome is required");
        assert_eq!(err(99, 0), "outcome: unknown value 99");
        assert_eq!(err(4, 0), "reject_reason is required");
        assert_eq!(err(4, -1), "reject_reason: unknown value -1");
        // A reason on a non-rejected outcome is ignored, not an error.
        assert_eq!(Outcome::try_from(&r(1, 2)), Ok(Outcome::Accepted));
    }
}
