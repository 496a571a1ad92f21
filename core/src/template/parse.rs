//! Parser: tokens to a tree of text, actions and control blocks. Checks at parse time what Go
//! checks at parse time (unknown functions, undefined variables, unbalanced blocks).

use super::Pos;
use super::lex::{Tok, Token, lex};

pub(super) type ParseError = (Pos, String);

/// The built-in functions of Go's text/template that we implement.
pub(super) const FUNCTIONS: &[&str] = &[
    "and", "or", "not", "len", "index", "slice", "printf", "print", "println", "eq", "ne", "lt",
    "le", "gt", "ge",
];

#[derive(Debug, Clone)]
pub(super) enum Node {
    Text(String),
    Action(Pipeline),
    If(Box<Branch>),
    With(Box<Branch>),
    Range(Box<Branch>),
}

#[derive(Debug, Clone)]
pub(super) struct Branch {
    pub pipe: Pipeline,
    pub then: Vec<Node>,
    pub otherwise: Vec<Node>,
}

#[derive(Debug, Clone)]
pub(super) struct Pipeline {
    pub pos: Pos,
    /// Variables declared (`:=`) or assigned (`=`) by this pipeline.
    pub vars: Vec<String>,
    pub assign: bool,
    pub cmds: Vec<Command>,
}

#[derive(Debug, Clone)]
pub(super) struct Command {
    pub args: Vec<Operand>,
}

#[derive(Debug, Clone)]
pub(super) struct Operand {
    pub pos: Pos,
    pub term: Term,
    /// Field names applied after the term: `.A.B` is `Dot` with chain `[A, B]`.
    pub chain: Vec<String>,
    /// Source-like text for error messages, as Go shows it in `<...>`.
    pub text: String,
}

#[derive(Debug, Clone)]
pub(super) enum Term {
    Dot,
    Var(String),
    Func(String),
    Str(String),
    Int(i64),
    Bool(bool),
    Nil,
    Sub(Box<Pipeline>),
}

enum Stop {
    Eof,
    End,
    Else,
    ElseIf(Pos),
    ElseWith(Pos),
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    vars: Vec<String>,
    depth: usize,
    /// Where the `end` or `else` that stopped the last list stands.
    stop_pos: Pos,
}

/// Deepest nesting of blocks and parentheses we accept; keeps hostile input off the stack's edge.
const MAX_DEPTH: usize = 64;

pub(super) fn parse(src: &str) -> Result<Vec<Node>, ParseError> {
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        i: 0,
        vars: vec!["$".to_owned()],
        depth: 0,
        stop_pos: Pos::default(),
    };
    let (nodes, stop) = p.list()?;
    match stop {
        Stop::Eof => Ok(nodes),
        Stop::End => Err((p.stop_pos, "unexpected {{end}}".into())),
        Stop::Else | Stop::ElseIf(_) | Stop::ElseWith(_) => {
            Err((p.stop_pos, "unexpected {{else}}".into()))
        }
    }
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.i)
    }
    fn peek_tok(&self) -> Option<&Tok> {
        self.peek().map(|t| &t.tok)
    }
    fn peek_tok_at(&self, n: usize) -> Option<&Tok> {
        self.toks.get(self.i + n).map(|t| &t.tok)
    }
    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.i).cloned();
        if t.is_some() {
            self.i += 1;
        }
        t
    }
    fn last_pos(&self) -> Pos {
        self.toks
            .get(self.i.saturating_sub(1))
            .map(|t| t.pos)
            .unwrap_or_default()
    }
    fn here(&self) -> Pos {
        self.peek()
            .map(|t| t.pos)
            .unwrap_or_else(|| self.last_pos())
    }
    fn expect_close(&mut self, what: &str) -> Result<(), ParseError> {
        match self.next() {
            Some(Token {
                tok: Tok::Close, ..
            }) => Ok(()),
            Some(t) => Err((t.pos, format!("unexpected {} in {what}", describe(&t.tok)))),
            None => Err((self.last_pos(), format!("unclosed {what}"))),
        }
    }

    fn list(&mut self) -> Result<(Vec<Node>, Stop), ParseError> {
        let mut nodes = Vec::new();
        while let Some(tok) = self.next() {
            match tok.tok {
                Tok::Text(s) => nodes.push(Node::Text(s)),
                Tok::Open => {
                    let kw = match self.peek_tok() {
                        Some(Tok::Ident(k)) => Some(k.clone()),
                        _ => None,
                    };
                    self.stop_pos = self.here();
                    match kw.as_deref() {
                        Some("end") => {
                            self.i += 1;
                            self.expect_close("end")?;
                            return Ok((nodes, Stop::End));
                        }
                        Some("else") => {
                            self.i += 1;
                            let after = self.here();
                            match self.peek_tok() {
                                Some(Tok::Ident(k)) if k == "if" => {
                                    self.i += 1;
                                    return Ok((nodes, Stop::ElseIf(after)));
                                }
                                Some(Tok::Ident(k)) if k == "with" => {
                                    self.i += 1;
                                    return Ok((nodes, Stop::ElseWith(after)));
                                }
                                _ => {
                                    self.expect_close("else")?;
                                    return Ok((nodes, Stop::Else));
                                }
                            }
                        }
                        Some("if") | Some("with") | Some("range") => {
                            let pos = self.here();
                            self.i += 1;
                            let node = match kw.as_deref() {
                                Some("if") => Node::If(Box::new(self.branch(pos, "if")?)),
                                Some("with") => Node::With(Box::new(self.branch(pos, "with")?)),
                                _ => Node::Range(Box::new(self.branch(pos, "range")?)),
                            };
                            nodes.push(node);
                        }
                        Some(k @ ("define" | "template" | "block" | "break" | "continue")) => {
                            return Err((
                                self.here(),
                                format!("{{{{{k}}}}} is not supported in SPIFFE ID templates"),
                            ));
                        }
                        _ => {
                            let pipe = self.pipeline(false)?;
                            self.expect_close("command")?;
                            if !pipe.assign {
                                self.vars.extend(pipe.vars.iter().cloned());
                            }
                            nodes.push(Node::Action(pipe));
                        }
                    }
                }
                other => return Err((tok.pos, format!("unexpected {}", describe(&other)))),
            }
        }
        Ok((nodes, Stop::Eof))
    }

    /// Parses `if`/`with`/`range` after its keyword, through the matching `{{end}}`.
    fn branch(&mut self, pos: Pos, keyword: &str) -> Result<Branch, ParseError> {
        self.enter(pos)?;
        let scope = self.vars.len();
        let mut pipe = self.pipeline(keyword == "range")?;
        pipe.pos = pos;
        self.expect_close(keyword)?;
        self.vars.extend(pipe.vars.iter().cloned());
        let (then, stop) = self.list()?;
        let otherwise = match stop {
            Stop::End => Vec::new(),
            Stop::Else => {
                let (otherwise, stop) = self.list()?;
                match stop {
                    Stop::End => otherwise,
                    _ => {
                        return Err((
                            self.stop_pos,
                            format!("expected end; found {{{{else}}}} in {keyword}"),
                        ));
                    }
                }
            }
            Stop::ElseIf(p) => vec![Node::If(Box::new(self.branch(p, "if")?))],
            Stop::ElseWith(p) => vec![Node::With(Box::new(self.branch(p, "with")?))],
            Stop::Eof => {
                return Err((pos, format!("unexpected EOF: {keyword} has no {{{{end}}}}")));
            }
        };
        self.vars.truncate(scope);
        self.depth -= 1;
        Ok(Branch {
            pipe,
            then,
            otherwise,
        })
    }

    fn enter(&mut self, pos: Pos) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err((pos, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn pipeline(&mut self, allow_two_vars: bool) -> Result<Pipeline, ParseError> {
        let pos = self.here();
        let mut vars = Vec::new();
        let mut assign = false;
        // Declarations: `$x :=`, `$x =`, and for range `$i, $e :=`.
        if let Some(Tok::Var(v)) = self.peek_tok().cloned() {
            match (
                self.peek_tok_at(1),
                self.peek_tok_at(2),
                self.peek_tok_at(3),
            ) {
                (Some(Tok::Declare), _, _) => {
                    vars.push(v);
                    self.i += 2;
                }
                (Some(Tok::Assign), _, _) => {
                    if !self.vars.contains(&v) {
                        return Err((pos, format!("undefined variable {v:?}")));
                    }
                    vars.push(v);
                    assign = true;
                    self.i += 2;
                }
                (Some(Tok::Comma), Some(Tok::Var(v2)), Some(Tok::Declare)) if allow_two_vars => {
                    vars.push(v);
                    vars.push(v2.clone());
                    self.i += 4;
                }
                _ => {}
            }
        }
        let mut cmds = Vec::new();
        loop {
            let cmd = self.command()?;
            if cmds.is_empty() {
                cmds.push(cmd);
            } else {
                // A later stage receives the previous result as its last argument.
                match cmd.args.first().map(|a| &a.term) {
                    Some(Term::Func(_)) | Some(Term::Sub(_)) | Some(Term::Dot)
                    | Some(Term::Var(_)) => {}
                    _ => {
                        let at = cmd.args.first().map(|a| a.pos).unwrap_or(pos);
                        return Err((
                            at,
                            format!(
                                "non executable command in pipeline stage {}",
                                cmds.len() + 1
                            ),
                        ));
                    }
                }
                cmds.push(cmd);
            }
            match self.peek_tok() {
                Some(Tok::Pipe) => {
                    self.i += 1;
                }
                _ => break,
            }
        }
        Ok(Pipeline {
            pos,
            vars,
            assign,
            cmds,
        })
    }

    fn command(&mut self) -> Result<Command, ParseError> {
        let mut args = Vec::new();
        loop {
            match self.peek_tok() {
                None | Some(Tok::Close) | Some(Tok::Pipe) | Some(Tok::RParen) => break,
                _ => args.push(self.operand()?),
            }
        }
        if args.is_empty() {
            return Err((self.here(), "missing value for command".into()));
        }
        if args.len() > 1 {
            let first = &args[0];
            if first.chain.is_empty()
                && matches!(
                    first.term,
                    Term::Str(_) | Term::Int(_) | Term::Bool(_) | Term::Nil
                )
            {
                return Err((
                    first.pos,
                    format!("can't give argument to non-function {}", first.text),
                ));
            }
        }
        Ok(Command { args })
    }

    fn operand(&mut self) -> Result<Operand, ParseError> {
        let Some(tok) = self.next() else {
            return Err((self.last_pos(), "unexpected EOF".into()));
        };
        let pos = tok.pos;
        let (term, mut chain, mut text) = match tok.tok {
            Tok::Dot => (Term::Dot, Vec::new(), ".".to_owned()),
            Tok::Field(f) => (Term::Dot, vec![f.clone()], format!(".{f}")),
            Tok::Var(v) => {
                if !self.vars.contains(&v) {
                    return Err((pos, format!("undefined variable {v:?}")));
                }
                (Term::Var(v.clone()), Vec::new(), v)
            }
            Tok::Ident(name) => match name.as_str() {
                "true" => (Term::Bool(true), Vec::new(), name),
                "false" => (Term::Bool(false), Vec::new(), name),
                "nil" => (Term::Nil, Vec::new(), name),
                _ if FUNCTIONS.contains(&name.as_str()) => {
                    (Term::Func(name.clone()), Vec::new(), name)
                }
                _ => return Err((pos, format!("function {name:?} not defined"))),
            },
            Tok::Str(s) => {
                let text = format!("{s:?}");
                (Term::Str(s), Vec::new(), text)
            }
            Tok::Int(n) => (Term::Int(n), Vec::new(), n.to_string()),
            Tok::LParen => {
                self.enter(pos)?;
                let pipe = self.pipeline(false)?;
                self.depth -= 1;
                match self.next() {
                    Some(Token {
                        tok: Tok::RParen, ..
                    }) => {}
                    Some(t) => {
                        return Err((
                            t.pos,
                            format!("unexpected {} in parenthesized pipeline", describe(&t.tok)),
                        ));
                    }
                    None => return Err((pos, "unclosed left paren".into())),
                }
                (Term::Sub(Box::new(pipe)), Vec::new(), "(...)".to_owned())
            }
            other => return Err((pos, format!("unexpected {} in operand", describe(&other)))),
        };
        // Adjacent `.Field` tokens continue the chain; a space ends it.
        while let Some(Token {
            tok: Tok::Field(f),
            spaced: false,
            ..
        }) = self.peek()
        {
            if matches!(
                term,
                Term::Func(_) | Term::Str(_) | Term::Int(_) | Term::Bool(_) | Term::Nil
            ) {
                return Err((pos, format!("unexpected . after term {text}")));
            }
            text.push('.');
            text.push_str(f);
            chain.push(f.clone());
            self.i += 1;
        }
        if let Some(Token {
            tok: Tok::Dot,
            spaced: false,
            pos: dot_pos,
        }) = self.peek()
        {
            return Err((*dot_pos, format!("unexpected . after term {text}")));
        }
        Ok(Operand {
            pos,
            term,
            chain,
            text,
        })
    }
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Text(_) => "text".into(),
        Tok::Open => "\"{{\"".into(),
        Tok::Close => "\"}}\"".into(),
        Tok::Field(f) => format!("<.{f}>"),
        Tok::Dot => "<.>".into(),
        Tok::Var(v) => format!("<{v}>"),
        Tok::Ident(i) => format!("<{i}>"),
        Tok::Str(s) => format!("{s:?}"),
        Tok::Int(n) => format!("<{n}>"),
        Tok::LParen => "\"(\"".into(),
        Tok::RParen => "\")\"".into(),
        Tok::Pipe => "\"|\"".into(),
        Tok::Declare => "\":=\"".into(),
        Tok::Assign => "\"=\"".into(),
        Tok::Comma => "\",\"".into(),
    }
}
