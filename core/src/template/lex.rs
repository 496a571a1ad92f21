//! Lexer: splits a template into text and the tokens of `{{ ... }}` actions.

use super::Pos;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tok {
    Text(String),
    Open,
    Close,
    /// `.Name`: one step of a field chain.
    Field(String),
    /// A lone `.`.
    Dot,
    /// `$` or `$name` (stored with the `$`).
    Var(String),
    Ident(String),
    Str(String),
    Int(i64),
    LParen,
    RParen,
    Pipe,
    Declare,
    Assign,
    Comma,
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    pub tok: Tok,
    pub pos: Pos,
    /// Whether white space came right before this token (it ends a field chain).
    pub spaced: bool,
}

pub(super) type LexError = (Pos, String);

struct Cursor<'a> {
    chars: Vec<char>,
    i: usize,
    line: u32,
    col: u32,
    _src: &'a str,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }
    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.i + n).copied()
    }
    fn starts_with(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(n, c)| self.peek_at(n) == Some(c))
    }
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.col,
        }
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }
    fn bump_n(&mut self, n: usize) {
        for _ in 0..n {
            self.bump();
        }
    }
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

pub(super) fn lex(src: &str) -> Result<Vec<Token>, LexError> {
    let mut cur = Cursor {
        chars: src.chars().collect(),
        i: 0,
        line: 1,
        col: 1,
        _src: src,
    };
    let mut out: Vec<Token> = Vec::new();
    let mut trim_next_text = false;
    loop {
        // Text up to the next "{{".
        let text_pos = cur.pos();
        let mut text = String::new();
        while cur.peek().is_some() && !cur.starts_with("{{") {
            text.extend(cur.bump());
        }
        if trim_next_text {
            text = text.trim_start_matches(is_space).to_owned();
        }
        let at_end = cur.peek().is_none();
        // "{{- " trims the white space before it.
        let trim_before = cur.starts_with("{{-") && cur.peek_at(3).is_some_and(is_space);
        if trim_before {
            text = text.trim_end_matches(is_space).to_owned();
        }
        if !text.is_empty() {
            out.push(Token {
                tok: Tok::Text(text),
                pos: text_pos,
                spaced: false,
            });
        }
        if at_end {
            return Ok(out);
        }
        let open_pos = cur.pos();
        cur.bump_n(if trim_before { 3 } else { 2 });
        // Comments: {{/* ... */}} with optional trim markers.
        let mut probe = 0;
        while cur.peek_at(probe).is_some_and(is_space) {
            probe += 1;
        }
        if cur.peek_at(probe) == Some('/') && cur.peek_at(probe + 1) == Some('*') {
            cur.bump_n(probe + 2);
            loop {
                if cur.peek().is_none() {
                    return Err((open_pos, "unclosed comment".into()));
                }
                if cur.starts_with("*/") {
                    cur.bump_n(2);
                    break;
                }
                cur.bump();
            }
            while cur.peek().is_some_and(is_space) {
                cur.bump();
            }
            if cur.starts_with("-}}") {
                cur.bump_n(3);
                trim_next_text = true;
            } else if cur.starts_with("}}") {
                cur.bump_n(2);
                trim_next_text = false;
            } else {
                return Err((cur.pos(), "comment ends before closing delimiter".into()));
            }
            continue;
        }
        out.push(Token {
            tok: Tok::Open,
            pos: open_pos,
            spaced: false,
        });
        trim_next_text = lex_action(&mut cur, &mut out, open_pos)?;
    }
}

/// Lexes the inside of one action up to and including `}}`. Returns whether it ended with `-}}`.
fn lex_action(cur: &mut Cursor<'_>, out: &mut Vec<Token>, open_pos: Pos) -> Result<bool, LexError> {
    let mut spaced = true;
    loop {
        let Some(c) = cur.peek() else {
            return Err((open_pos, "unclosed action".into()));
        };
        let pos = cur.pos();
        if is_space(c) {
            // " -}}" trims the white space after the action.
            if cur.peek_at(1) == Some('-')
                && cur.peek_at(2) == Some('}')
                && cur.peek_at(3) == Some('}')
            {
                cur.bump_n(4);
                out.push(Token {
                    tok: Tok::Close,
                    pos,
                    spaced: true,
                });
                return Ok(true);
            }
            cur.bump();
            spaced = true;
            continue;
        }
        if cur.starts_with("}}") {
            cur.bump_n(2);
            out.push(Token {
                tok: Tok::Close,
                pos,
                spaced,
            });
            return Ok(false);
        }
        let tok = match c {
            '(' => {
                cur.bump();
                Tok::LParen
            }
            ')' => {
                cur.bump();
                Tok::RParen
            }
            '|' => {
                cur.bump();
                Tok::Pipe
            }
            ',' => {
                cur.bump();
                Tok::Comma
            }
            '=' => {
                cur.bump();
                Tok::Assign
            }
            ':' => {
                cur.bump();
                if cur.peek() != Some('=') {
                    return Err((pos, "expected :=".into()));
                }
                cur.bump();
                Tok::Declare
            }
            '"' => Tok::Str(lex_quoted(cur, pos)?),
            '`' => {
                cur.bump();
                let mut s = String::new();
                loop {
                    match cur.bump() {
                        None => return Err((pos, "unterminated raw quoted string".into())),
                        Some('`') => break,
                        Some(ch) => s.push(ch),
                    }
                }
                Tok::Str(s)
            }
            '.' => {
                cur.bump();
                if cur.peek().is_some_and(is_ident_char)
                    && !cur.peek().is_some_and(|d| d.is_ascii_digit())
                {
                    Tok::Field(take_ident(cur))
                } else if cur.peek().is_some_and(|d| d.is_ascii_digit()) {
                    return Err((pos, "floating-point numbers are not supported".into()));
                } else {
                    Tok::Dot
                }
            }
            '$' => {
                cur.bump();
                Tok::Var(format!("${}", take_ident(cur)))
            }
            '-' | '+' | '0'..='9' => Tok::Int(lex_number(cur, pos)?),
            c if is_ident_char(c) => Tok::Ident(take_ident(cur)),
            other => return Err((pos, format!("unexpected {other:?} in command"))),
        };
        out.push(Token { tok, pos, spaced });
        spaced = false;
    }
}

fn take_ident(cur: &mut Cursor<'_>) -> String {
    let mut s = String::new();
    while let Some(c) = cur.peek().filter(|c| is_ident_char(*c)) {
        s.push(c);
        cur.bump();
    }
    s
}

fn lex_number(cur: &mut Cursor<'_>, pos: Pos) -> Result<i64, LexError> {
    let mut s = String::new();
    if let Some(sign @ ('-' | '+')) = cur.peek() {
        s.push(sign);
        cur.bump();
    }
    while let Some(c) = cur
        .peek()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
    {
        s.push(c);
        cur.bump();
    }
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(&s)),
    };
    let digits = digits.replace('_', "");
    let parsed = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i64::from_str_radix(hex, 16)
    } else {
        digits.parse::<i64>()
    };
    match parsed {
        Ok(n) => Ok(if negative { -n } else { n }),
        Err(_) => Err((pos, format!("bad number syntax: {s:?}"))),
    }
}

fn lex_quoted(cur: &mut Cursor<'_>, pos: Pos) -> Result<String, LexError> {
    cur.bump();
    let mut s = String::new();
    loop {
        match cur.bump() {
            None | Some('\n') => return Err((pos, "unterminated quoted string".into())),
            Some('"') => return Ok(s),
            Some('\\') => {
                let esc = cur
                    .bump()
                    .ok_or((pos, "unterminated quoted string".to_owned()))?;
                match esc {
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    '\\' => s.push('\\'),
                    '"' => s.push('"'),
                    '\'' => s.push('\''),
                    'x' => {
                        let hex: String = [cur.bump(), cur.bump()].into_iter().flatten().collect();
                        let b = u8::from_str_radix(&hex, 16)
                            .map_err(|_| (pos, format!("invalid escape \\x{hex}")))?;
                        s.push(char::from(b));
                    }
                    other => return Err((pos, format!("unknown escape sequence \\{other}"))),
                }
            }
            Some(c) => s.push(c),
        }
    }
}
