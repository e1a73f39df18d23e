//! The recruiting pipeline of a job applicant: `applied → screening → interview → offer →
//! hired`, or `rejected` / `withdrawn` from any open stage. Hired, rejected and withdrawn are
//! final.

use crate::values::ValueError;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Applied,
    Screening,
    Interview,
    Offer,
    Hired,
    Rejected,
    Withdrawn,
}

/// For error messages.
const OPTIONS: &str = "applied, screening, interview, offer, hired, rejected, withdrawn";

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Applied,
        Stage::Screening,
        Stage::Interview,
        Stage::Offer,
        Stage::Hired,
        Stage::Rejected,
        Stage::Withdrawn,
    ];

    /// The stable name stored in events and read models.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Applied => "applied",
            Stage::Screening => "screening",
            Stage::Interview => "interview",
            Stage::Offer => "offer",
            Stage::Hired => "hired",
            Stage::Rejected => "rejected",
            Stage::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        Self::ALL
            .into_iter()
            .find(|stage| stage.as_str() == raw.trim())
            .ok_or(ValueError::NotAnOption { options: OPTIONS })
    }

    /// Whether the applicant is still in the running.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Stage::Applied | Stage::Screening | Stage::Interview | Stage::Offer
        )
    }

    /// The stage after this one on the way to an offer, if any.
    fn next(self) -> Option<Stage> {
        match self {
            Stage::Applied => Some(Stage::Screening),
            Stage::Screening => Some(Stage::Interview),
            Stage::Interview => Some(Stage::Offer),
            _ => None,
        }
    }

    /// Checks a move by an update. Hiring is not a move an update can make: it creates an
    /// employee record (`Hire`), so `offer → hired` is refused here.
    pub fn check_move(self, to: Stage) -> Result<(), ValueError> {
        let allowed = self.is_open()
            && (Some(to) == self.next() || matches!(to, Stage::Rejected | Stage::Withdrawn));
        if allowed {
            Ok(())
        } else {
            Err(ValueError::IllegalTransition {
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applicants_move_forward_one_stage_or_leave_from_an_open_one() {
        use Stage::*;
        for (from, to) in [
            (Applied, Screening),
            (Screening, Interview),
            (Interview, Offer),
            (Applied, Rejected),
            (Offer, Withdrawn),
        ] {
            assert_eq!(from.check_move(to), Ok(()), "{from:?} → {to:?}");
        }
        for (from, to) in [
            (Applied, Interview),
            (Offer, Hired),
            (Interview, Screening),
            (Rejected, Applied),
            (Hired, Withdrawn),
            (Withdrawn, Rejected),
        ] {
            assert!(from.check_move(to).is_err(), "{from:?} → {to:?}");
        }
        assert_eq!(Stage::parse(" offer "), Ok(Offer));
        assert!(Stage::parse("limbo").is_err());
    }
}
