//! The one error of the filter language: where in the text it went wrong and what was
//! expected there.
//!
//! Users read these in a terminal after typing a filter on the command line, so the message
//! names a position they can count to (line and column in characters, plus the byte offset
//! for programs) and says what would have been accepted. The position always lies on a
//! character boundary of the text it was computed from, or at its end.

use std::fmt::Write as _;

/// A filter that could not be parsed: a syntax error, a type error (an operator applied
/// to a field it does not fit) or a limit exceeded. The caller should fix the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {}: {message}", position(*.line, *.column, *.offset))]
pub struct FilterError {
    offset: usize,
    line: usize,
    column: usize,
    message: String,
}

fn position(line: usize, column: usize, offset: usize) -> String {
    if line > 1 {
        format!("line {line}, column {column} (byte offset {offset})")
    } else {
        format!("column {column} (byte offset {offset})")
    }
}

impl FilterError {
    /// An error at byte `offset` of `text`. An offset past the end or inside a character is
    /// moved back to the nearest boundary, so the position is always one a user can see.
    pub(crate) fn at(text: &str, offset: usize, message: impl Into<String>) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Self {
            offset,
            line,
            column,
            message: message.into(),
        }
    }

    /// Byte offset into the filter text (0-based) where the error was found.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Line of the error (1-based); filters typed on a command line have one.
    pub fn line(&self) -> usize {
        self.line
    }

    /// Column of the error in characters (1-based) within its line.
    pub fn column(&self) -> usize {
        self.column
    }

    /// What went wrong and what was expected, without the position.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The line of `text` holding the error with a caret under its column, followed by
    /// the message; meant for a terminal. Long lines are cut to a window around the
    /// error. `text` must be the text this error came from.
    pub fn annotate(&self, text: &str) -> String {
        // Characters shown before and after the error position on a long line.
        const BEFORE: usize = 50;
        const AFTER: usize = 25;
        let line = text.lines().nth(self.line - 1).unwrap_or("");
        let chars: Vec<char> = line.chars().collect();
        let col = self.column - 1;
        let start = col.saturating_sub(BEFORE);
        let end = chars.len().min(col + AFTER);
        let mut out = String::new();
        let mut caret = col - start;
        if start > 0 {
            out.push_str("...");
            caret += 3;
        }
        out.extend(
            chars[start.min(end)..end]
                .iter()
                .map(|&c| if c.is_control() { ' ' } else { c }),
        );
        if end < chars.len() {
            out.push_str("...");
        }
        let _ = write!(out, "\n{}^ {}", " ".repeat(caret), self);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_counts_characters_not_bytes() {
        let text = "country = \"É\" x";
        let e = FilterError::at(text, text.len() - 1, "boom");
        assert_eq!((e.line(), e.column(), e.offset()), (1, 15, 15));
        assert_eq!(e.to_string(), "at column 15 (byte offset 15): boom");
    }

    #[test]
    fn position_names_the_line_when_the_text_has_several() {
        let text = "country = \"USA\"\n and x";
        let e = FilterError::at(text, 21, "boom");
        assert_eq!((e.line(), e.column()), (2, 6));
        assert_eq!(e.to_string(), "at line 2, column 6 (byte offset 21): boom");
    }

    #[test]
    fn offset_inside_a_character_moves_back_to_its_start() {
        let e = FilterError::at("ééé", 3, "boom");
        assert_eq!((e.offset(), e.column()), (2, 2));
        let e = FilterError::at("ab", 99, "boom");
        assert_eq!((e.offset(), e.column()), (2, 3));
    }

    #[test]
    fn annotate_puts_a_caret_under_the_error() {
        let text = "country = USA";
        let e = FilterError::at(text, 10, "expected a string");
        assert_eq!(
            e.annotate(text),
            "country = USA\n          ^ at column 11 (byte offset 10): expected a string"
        );
    }

    #[test]
    fn annotate_cuts_long_lines_around_the_error() {
        let text = format!("{}X{}", "a".repeat(100), "b".repeat(100));
        let e = FilterError::at(&text, 100, "here");
        let shown = e.annotate(&text);
        let mut lines = shown.lines();
        let first = lines.next().expect("a text line");
        let second = lines.next().expect("a caret line");
        let caret = second.find('^').expect("a caret");
        assert_eq!(first.chars().nth(caret), Some('X'));
        assert!(first.len() < 90, "{first}");
    }
}
