//! A single register with read, write and compare-and-set, as in Jepsen's
//! etcd tests. The register starts empty (`nil`).

use super::model::Model;

/// A register request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    /// Read the value.
    Read,
    /// Set the value.
    Write(i64),
    /// Set the value to `to` if it is `from`.
    Cas {
        /// The value the register must hold.
        from: i64,
        /// The value it then holds.
        to: i64,
    },
}

/// A register reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    /// A read returned this value (`None`: never written).
    Read(Option<i64>),
    /// A write, or a compare-and-set that succeeded (Jepsen `:ok`).
    Ok,
    /// A compare-and-set that definitely did not take effect (Jepsen
    /// `:fail`): at its linearization point the register did not hold
    /// `from`.
    Failed,
    /// The outcome is unknown (Jepsen `:info`, or no completion): accepted
    /// in every state. Use it with `ret == UNKNOWN_RETURN`.
    Unknown,
}

/// The register model: state `Option<i64>`, starting `None`.
///
/// * a read is legal iff it returns the state;
/// * a write sets the state;
/// * a successful cas is legal iff the state is `Some(from)`, and sets `to`;
/// * a failed cas is legal iff the state is not `Some(from)`, and changes
///   nothing;
/// * an unknown write takes effect; an unknown cas takes effect iff the
///   state is `Some(from)` (a cas that would fail changes nothing either
///   way). "Never took effect" is covered by linearizing it last.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegisterModel;

impl Model for RegisterModel {
    type State = Option<i64>;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> Option<i64> {
        None
    }

    fn step(
        &self,
        state: &Option<i64>,
        input: &RegisterInput,
        output: &RegisterOutput,
    ) -> Option<Option<i64>> {
        use RegisterInput as I;
        use RegisterOutput as O;
        match (*input, *output) {
            (I::Read, O::Read(v)) => (v == *state).then_some(*state),
            (I::Read, O::Unknown) => Some(*state),
            (I::Write(v), O::Ok | O::Unknown) => Some(Some(v)),
            (I::Cas { from, to }, O::Ok) => (*state == Some(from)).then_some(Some(to)),
            (I::Cas { from, .. }, O::Failed) => (*state != Some(from)).then_some(*state),
            (I::Cas { from, to }, O::Unknown) => Some(if *state == Some(from) {
                Some(to)
            } else {
                *state
            }),
            // An output that does not fit the input is never legal.
            (I::Read, O::Ok | O::Failed)
            | (I::Write(_), O::Read(_) | O::Failed)
            | (I::Cas { .. }, O::Read(_)) => None,
        }
    }

    fn describe_operation(&self, input: &RegisterInput, output: &RegisterOutput) -> String {
        use RegisterInput as I;
        use RegisterOutput as O;
        let call = match input {
            I::Read => "read()".to_string(),
            I::Write(v) => format!("write({v})"),
            I::Cas { from, to } => format!("cas({from}, {to})"),
        };
        match output {
            O::Read(v) => format!("{call} -> {}", show(*v)),
            O::Ok => call,
            O::Failed => format!("{call} failed"),
            O::Unknown => format!("{call} ?"),
        }
    }

    fn describe_state(&self, state: &Option<i64>) -> String {
        show(*state)
    }
}

fn show(v: Option<i64>) -> String {
    v.map_or_else(|| "nil".to_string(), |v| v.to_string())
}
