//! The Dockerfile parser: parser directives (`# syntax`, `# escape`),
//! comments, line continuations, instructions in shell and exec (JSON)
//! form, global ARGs before the first FROM, and stages. Words stay as
//! written; the builder expands variables with the values in effect at each
//! step (see [`super::expand`]). Errors name the file and line and say what
//! was expected.

use std::fmt;

use super::expand::{self, ExpandError};

/// A Dockerfile that could not be parsed: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// A command in shell form (run by the SHELL) or exec form (an argv).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

/// COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyArgs {
    /// `--from=stage|image|index`.
    pub from: Option<String>,
    /// `--chown=USER[:GROUP]`.
    pub chown: Option<String>,
    /// `--chmod=OCTAL`.
    pub chmod: Option<String>,
    /// Sources, then the destination last (unexpanded words).
    pub sources: Vec<String>,
    pub dest: String,
}

/// HEALTHCHECK options as written (durations like `30s`, `1m30s`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Healthcheck {
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub start_period: Option<String>,
    pub start_interval: Option<String>,
    pub retries: Option<String>,
    pub command: Option<Command>,
}

/// One instruction, as written (words not yet expanded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From {
        image: String,
        name: Option<String>,
        platform: Option<String>,
    },
    Run(Command),
    Cmd(Command),
    Entrypoint(Command),
    Copy(CopyArgs),
    Add(CopyArgs),
    /// `KEY=VALUE` pairs; values keep their quotes until expanded.
    Env(Vec<(String, String)>),
    /// Names with their default (raw), if any.
    Arg(Vec<(String, Option<String>)>),
    Label(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Expose(String),
    Volume(Vec<String>),
    StopSignal(String),
    /// None: `HEALTHCHECK NONE`.
    Healthcheck(Option<Healthcheck>),
    Shell(Vec<String>),
    Maintainer(String),
}

/// An instruction with where it was and how it read (for the build's
/// output, the history's `created_by` and errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    /// The instruction on one line, as written (continuations joined).
    pub text: String,
    pub instruction: Instruction,
}

/// One stage: its FROM and what follows until the next FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub from: Step,
    pub steps: Vec<Step>,
}

impl Stage {
    /// The stage's `AS` name, if any.
    pub fn name(&self) -> Option<&str> {
        match &self.from.instruction {
            Instruction::From { name, .. } => name.as_deref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`\` or `` ` `` with `# escape=`).
    pub escape: char,
    /// `# syntax=` as given (recorded; hull's parser is always used).
    pub syntax: Option<String>,
    /// ARGs before the first FROM (usable in FROM lines).
    pub global_args: Vec<Step>,
    pub stages: Vec<Stage>,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Shell(s) => f.write_str(s),
            Command::Exec(v) => write!(f, "{}", serde_json::to_string(v).unwrap_or_default()),
        }
    }
}

/// What the first pass finds: the escape character, `# syntax`, and the
/// logical lines (first line number, text).
struct Lines {
    escape: char,
    syntax: Option<String>,
    lines: Vec<(usize, String)>,
}

/// Logical lines: (first line number, text) with comments dropped and
/// continuations joined; plus the directives found at the top.
fn logical_lines(text: &str, file: &str) -> Result<Lines, ParseError> {
    let mut escape = '\\';
    let mut syntax = None;
    let mut lines = text.lines().enumerate().peekable();
    // Parser directives: `# key=value` lines at the very top.
    while let Some((n, l)) = lines.peek() {
        let Some(body) = l.trim().strip_prefix('#') else {
            break;
        };
        let Some((k, v)) = body.split_once('=') else {
            break;
        };
        let key = k.trim().to_ascii_lowercase();
        if key.is_empty() || key.contains(char::is_whitespace) {
            break;
        }
        let value = v.trim();
        match key.as_str() {
            "escape" => {
                escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(ParseError {
                            file: file.into(),
                            line: n + 1,
                            message: format!(
                                "invalid escape directive {value:?}: expected \\ or `"
                            ),
                        });
                    }
                }
            }
            "syntax" => syntax = Some(value.to_string()),
            _ => {} // `check` and unknown directives are ignored, as docker does
        }
        lines.next();
    }
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (n, raw) in lines {
        let trimmed = raw.trim_start();
        if trimmed.starts_with('#') {
            continue; // a comment, also inside a continuation
        }
        if cur.is_some() && trimmed.is_empty() {
            continue; // an empty line inside a continuation
        }
        let body = raw.trim_end();
        let (body, continues) = match body.strip_suffix(escape) {
            // `\\` at the end is an escaped escape, not a continuation.
            Some(b) if !b.ends_with(escape) || escape == '`' => (b, true),
            _ => (body, false),
        };
        let (start, mut acc) = cur.take().unwrap_or((n + 1, String::new()));
        acc.push_str(if acc.is_empty() {
            body.trim_start()
        } else {
            body
        });
        if continues {
            cur = Some((start, acc));
        } else if !acc.trim().is_empty() {
            out.push((start, acc.trim().to_string()));
        }
    }
    if let Some((start, acc)) = cur {
        if !acc.trim().is_empty() {
            out.push((start, acc.trim().to_string()));
        }
    }
    Ok(Lines {
        escape,
        syntax,
        lines: out,
    })
}

/// `["a", "b"]`: the exec form, when the text is a JSON array of strings.
fn exec_form(rest: &str) -> Option<Vec<String>> {
    if !rest.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(rest).ok()
}

fn command(rest: &str) -> Command {
    match exec_form(rest) {
        Some(v) => Command::Exec(v),
        None => Command::Shell(rest.to_string()),
    }
}

/// Leading `--name=value` flags of `rest`, and what follows them.
fn flags(rest: &str, escape: char) -> Result<(Vec<(String, String)>, String), String> {
    let mut flags = Vec::new();
    let mut s = rest.trim_start();
    while let Some(f) = s.strip_prefix("--") {
        let end = f.find(char::is_whitespace).unwrap_or(f.len());
        let word = &f[..end];
        let (k, v) = match word.split_once('=') {
            Some((k, v)) => (k, v),
            None => (word, "true"),
        };
        let v = expand::word(v, escape, &|_: &str| None).map_err(|e| format!("--{k}: {e}"))?;
        flags.push((k.to_ascii_lowercase(), v));
        s = f[end..].trim_start();
    }
    Ok((flags, s.to_string()))
}

fn no_flags(flags: &[(String, String)], what: &str) -> Result<(), String> {
    match flags.first() {
        Some((k, _)) => Err(format!("{what} takes no flag --{k}")),
        None => Ok(()),
    }
}

/// `KEY=VALUE ...` (or the legacy `KEY VALUE` with one pair).
fn pairs(rest: &str, escape: char, what: &str) -> Result<Vec<(String, String)>, String> {
    let words = expand::split_raw(rest, escape).map_err(|e: ExpandError| e.to_string())?;
    if words.is_empty() {
        return Err(format!("{what} needs KEY=VALUE"));
    }
    if !words[0].contains('=') {
        // Legacy form: the first word is the key, the rest of the line the value.
        let key = words[0].clone();
        let value = rest.trim_start()[key.len()..].trim().to_string();
        if value.is_empty() {
            return Err(format!("{what} {key}: expected KEY=VALUE or KEY VALUE"));
        }
        return Ok(vec![(key, value)]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("{what}: expected KEY=VALUE, found {w:?}")),
        })
        .collect()
}

fn copy_args(rest: &str, escape: char, add: bool) -> Result<CopyArgs, String> {
    let what = if add { "ADD" } else { "COPY" };
    let (flags, rest) = flags(rest, escape)?;
    let mut args = CopyArgs::default();
    for (k, v) in flags {
        match k.as_str() {
            "from" if !add => args.from = Some(v),
            "chown" => args.chown = Some(v),
            "chmod" => {
                if u32::from_str_radix(&v, 8).is_err() {
                    return Err(format!("{what} --chmod={v}: expected an octal mode"));
                }
                args.chmod = Some(v)
            }
            "link" => {}
            _ => return Err(format!("{what}: unknown flag --{k}")),
        }
    }
    let mut words = match exec_form(&rest) {
        Some(v) => v,
        None => expand::split_raw(&rest, escape).map_err(|e| e.to_string())?,
    };
    if words.len() < 2 {
        return Err(format!("{what} needs a source and a destination"));
    }
    args.dest = words.pop().unwrap_or_default();
    args.sources = words;
    Ok(args)
}

fn healthcheck(rest: &str, escape: char) -> Result<Option<Healthcheck>, String> {
    if rest.trim().eq_ignore_ascii_case("NONE") {
        return Ok(None);
    }
    let (flags, rest) = flags(rest, escape)?;
    let mut h = Healthcheck::default();
    for (k, v) in flags {
        let slot = match k.as_str() {
            "interval" => &mut h.interval,
            "timeout" => &mut h.timeout,
            "start-period" => &mut h.start_period,
            "start-interval" => &mut h.start_interval,
            "retries" => &mut h.retries,
            _ => return Err(format!("HEALTHCHECK: unknown flag --{k}")),
        };
        *slot = Some(v);
    }
    let (word, cmd) = match rest.split_once(char::is_whitespace) {
        Some((w, c)) => (w, c.trim()),
        None => (rest.as_str(), ""),
    };
    if !word.eq_ignore_ascii_case("CMD") || cmd.is_empty() {
        return Err("HEALTHCHECK: expected NONE or [OPTIONS] CMD command".into());
    }
    h.command = Some(command(cmd));
    Ok(Some(h))
}

fn instruction(keyword: &str, rest: &str, escape: char) -> Result<Instruction, String> {
    let need = |what: &str| -> Result<(), String> {
        if rest.is_empty() {
            Err(format!("{what} needs an argument"))
        } else {
            Ok(())
        }
    };
    Ok(match keyword {
        "FROM" => {
            let (flags, rest) = flags(rest, escape)?;
            let mut platform = None;
            for (k, v) in flags {
                match k.as_str() {
                    "platform" => platform = Some(v),
                    _ => return Err(format!("FROM: unknown flag --{k}")),
                }
            }
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                [image] => Instruction::From {
                    image: image.to_string(),
                    name: None,
                    platform,
                },
                [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
                    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                    if !valid {
                        return Err(format!(
                            "FROM: invalid stage name {name:?}: letters, digits, -, _ and ., starting with a letter"
                        ));
                    }
                    Instruction::From {
                        image: image.to_string(),
                        name: Some(name.to_ascii_lowercase()),
                        platform,
                    }
                }
                _ => return Err("FROM: expected IMAGE [AS NAME]".into()),
            }
        }
        "RUN" => {
            let (flags, rest) = flags(rest, escape)?;
            no_flags(&flags, "RUN")?;
            if rest.is_empty() {
                return Err("RUN needs a command".into());
            }
            Instruction::Run(command(&rest))
        }
        "CMD" => {
            need("CMD")?;
            Instruction::Cmd(command(rest))
        }
        "ENTRYPOINT" => {
            need("ENTRYPOINT")?;
            Instruction::Entrypoint(command(rest))
        }
        "COPY" => Instruction::Copy(copy_args(rest, escape, false)?),
        "ADD" => Instruction::Add(copy_args(rest, escape, true)?),
        "ENV" => Instruction::Env(pairs(rest, escape, "ENV")?),
        "LABEL" => Instruction::Label(pairs(rest, escape, "LABEL")?),
        "ARG" => {
            let words = expand::split_raw(rest, escape).map_err(|e| e.to_string())?;
            if words.is_empty() {
                return Err("ARG needs a NAME[=DEFAULT]".into());
            }
            let mut args = Vec::new();
            for w in words {
                let (name, default) = match w.split_once('=') {
                    Some((n, d)) => (n.to_string(), Some(d.to_string())),
                    None => (w, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("ARG: invalid name {name:?}"));
                }
                args.push((name, default));
            }
            Instruction::Arg(args)
        }
        "WORKDIR" => {
            need("WORKDIR")?;
            Instruction::Workdir(rest.to_string())
        }
        "USER" => {
            need("USER")?;
            Instruction::User(rest.to_string())
        }
        "EXPOSE" => {
            need("EXPOSE")?;
            Instruction::Expose(rest.to_string())
        }
        "VOLUME" => {
            need("VOLUME")?;
            Instruction::Volume(match exec_form(rest) {
                Some(v) => v,
                None => expand::split_raw(rest, escape).map_err(|e| e.to_string())?,
            })
        }
        "STOPSIGNAL" => {
            need("STOPSIGNAL")?;
            Instruction::StopSignal(rest.to_string())
        }
        "HEALTHCHECK" => {
            need("HEALTHCHECK")?;
            Instruction::Healthcheck(healthcheck(rest, escape)?)
        }
        "SHELL" => match exec_form(rest) {
            Some(v) if !v.is_empty() => Instruction::Shell(v),
            _ => return Err("SHELL: expected a JSON array, e.g. [\"/bin/sh\", \"-c\"]".into()),
        },
        "MAINTAINER" => {
            need("MAINTAINER")?;
            Instruction::Maintainer(rest.to_string())
        }
        "ONBUILD" => return Err("ONBUILD is not supported".into()),
        _ => {
            return Err(format!(
                "unknown instruction {keyword}: expected FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, CMD, ENTRYPOINT, EXPOSE, LABEL, VOLUME, STOPSIGNAL, HEALTHCHECK, SHELL"
            ));
        }
    })
}

/// Parses `text`, read from `file` (the name errors give).
pub fn parse(text: &str, file: &str) -> Result<Dockerfile, ParseError> {
    let Lines {
        escape,
        syntax,
        lines,
    } = logical_lines(text, file)?;
    let mut df = Dockerfile {
        escape,
        syntax,
        global_args: Vec::new(),
        stages: Vec::new(),
    };
    for (line, text) in lines {
        let err = |message: String| ParseError {
            file: file.into(),
            line,
            message,
        };
        let (kw, rest) = match text.split_once(char::is_whitespace) {
            Some((k, r)) => (k, r.trim()),
            None => (text.as_str(), ""),
        };
        let keyword = kw.to_ascii_uppercase();
        let instruction = instruction(&keyword, rest, escape).map_err(err)?;
        let step = Step {
            line,
            text: format!("{keyword} {rest}").trim_end().to_string(),
            instruction,
        };
        match (&step.instruction, df.stages.last_mut()) {
            (Instruction::From { .. }, _) => df.stages.push(Stage {
                from: step,
                steps: Vec::new(),
            }),
            (_, Some(stage)) => stage.steps.push(step),
            (Instruction::Arg(_), None) => df.global_args.push(step),
            (_, None) => {
                return Err(err(format!(
                    "{keyword} before FROM: expected FROM (only ARG may come first)"
                )));
            }
        }
    }
    if df.stages.is_empty() {
        return Err(ParseError {
            file: file.into(),
            line: text.lines().count().max(1),
            message: "no FROM instruction: expected FROM IMAGE".into(),
        });
    }
    let mut names = std::collections::HashSet::new();
    for s in &df.stages {
        if let Some(n) = s.name() {
            if !names.insert(n.to_string()) {
                return Err(ParseError {
                    file: file.into(),
                    line: s.from.line,
                    message: format!("stage name {n:?} is used twice"),
                });
            }
        }
    }
    Ok(df)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Dockerfile {
        parse(text, "Dockerfile").unwrap()
    }

    fn err(text: &str) -> String {
        parse(text, "Dockerfile").unwrap_err().to_string()
    }

    fn steps(text: &str) -> Vec<Instruction> {
        p(text).stages[0]
            .steps
            .iter()
            .map(|s| s.instruction.clone())
            .collect()
    }

    #[test]
    fn instructions_shell_and_exec_forms() {
        let s = steps(
            "FROM busybox\nRUN echo hello\nRUN [\"/bin/sh\", \"-c\", \"echo exec\"]\n\
             CMD [\"sh\"]\nENTRYPOINT top -b\nrun lower case\n",
        );
        assert_eq!(
            s,
            vec![
                Instruction::Run(Command::Shell("echo hello".into())),
                Instruction::Run(Command::Exec(vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo exec".into()
                ])),
                Instruction::Cmd(Command::Exec(vec!["sh".into()])),
                Instruction::Entrypoint(Command::Shell("top -b".into())),
                Instruction::Run(Command::Shell("lower case".into())),
            ]
        );
        // Not valid JSON: the shell form, as docker treats it.
        assert_eq!(
            steps("FROM a\nCMD [\"a\", 'b']")[0],
            Instruction::Cmd(Command::Shell("[\"a\", 'b']".into()))
        );
    }

    #[test]
    fn continuations_and_comments() {
        // From the reference: comments inside a continued RUN are dropped.
        let df = p(
            "# a comment\nFROM busybox\nRUN echo hello \\\n# comment\nworld\n\n\
             RUN apt-get update && \\\n    apt-get install -y \\\n\n    curl\n",
        );
        let s = &df.stages[0].steps;
        assert_eq!(
            s[0].instruction,
            Instruction::Run(Command::Shell("echo hello world".into()))
        );
        assert_eq!(s[0].line, 3);
        assert_eq!(
            s[1].instruction,
            Instruction::Run(Command::Shell(
                "apt-get update &&     apt-get install -y     curl".into()
            ))
        );
        assert_eq!(s[1].line, 7);
        // A trailing escaped escape is not a continuation.
        assert_eq!(
            steps("FROM a\nRUN echo a\\\\\nRUN b")[0],
            Instruction::Run(Command::Shell("echo a\\\\".into()))
        );
    }

    #[test]
    fn parser_directives() {
        // The reference's Windows example with `# escape=` + backtick.
        let df = p("# escape=`\n# syntax=docker/dockerfile:1\n\nFROM busybox\n\
             COPY testfile.txt c:\\\nRUN dir c:\\ `\n  && echo done\n");
        assert_eq!(df.escape, '`');
        assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1"));
        let s = &df.stages[0].steps;
        assert_eq!(
            s[0].instruction,
            Instruction::Copy(CopyArgs {
                sources: vec!["testfile.txt".into()],
                dest: "c:\\".into(),
                ..Default::default()
            })
        );
        assert_eq!(
            s[1].instruction,
            Instruction::Run(Command::Shell("dir c:\\   && echo done".into()))
        );
        // A directive after a comment or an instruction is only a comment.
        let df = p("# hello\n# escape=`\nFROM a\nRUN x \\\ny\n");
        assert_eq!(df.escape, '\\');
        assert_eq!(
            df.stages[0].steps[0].instruction,
            Instruction::Run(Command::Shell("x y".into()))
        );
        assert!(err("# escape=x\nFROM a").contains("Dockerfile:1: invalid escape directive"));
    }

    #[test]
    fn args_before_from_and_stages() {
        let df = p(
            "ARG VERSION=latest\nARG OTHER\nFROM busybox:$VERSION AS build\n\
             ARG VERSION\nRUN echo $VERSION > image_version\n\
             FROM scratch\nCOPY --from=build /image_version /\n",
        );
        assert_eq!(df.global_args.len(), 2);
        assert_eq!(
            df.global_args[0].instruction,
            Instruction::Arg(vec![("VERSION".into(), Some("latest".into()))])
        );
        assert_eq!(df.stages.len(), 2);
        assert_eq!(df.stages[0].name(), Some("build"));
        assert_eq!(df.stages[1].name(), None);
        assert_eq!(
            df.stages[1].steps[0].instruction,
            Instruction::Copy(CopyArgs {
                from: Some("build".into()),
                sources: vec!["/image_version".into()],
                dest: "/".into(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn env_label_arg_forms() {
        let s = steps(
            "FROM a\nENV MY_NAME=\"John Doe\" MY_DOG=Rex\\ The\\ Dog MY_CAT=fluffy\n\
             ENV MY_VAR my-value with spaces\nLABEL \"com.example.vendor\"=\"ACME\" version=1.0\n\
             ARG user1=someuser buildno\n",
        );
        assert_eq!(
            s[0],
            Instruction::Env(vec![
                ("MY_NAME".into(), "\"John Doe\"".into()),
                ("MY_DOG".into(), "Rex\\ The\\ Dog".into()),
                ("MY_CAT".into(), "fluffy".into()),
            ])
        );
        assert_eq!(
            s[1],
            Instruction::Env(vec![("MY_VAR".into(), "my-value with spaces".into())])
        );
        assert_eq!(
            s[2],
            Instruction::Label(vec![
                ("\"com.example.vendor\"".into(), "\"ACME\"".into()),
                ("version".into(), "1.0".into()),
            ])
        );
        assert_eq!(
            s[3],
            Instruction::Arg(vec![
                ("user1".into(), Some("someuser".into())),
                ("buildno".into(), None)
            ])
        );
    }

    #[test]
    fn copy_add_flags_and_others() {
        let s = steps(
            "FROM a\nCOPY --chown=55:mygroup --chmod=644 files* /somedir/\n\
             ADD [\"a b.tar\", \"/x y/\"]\nHEALTHCHECK --interval=5m --timeout=3s \\\n  CMD curl -f http://localhost/ || exit 1\n\
             HEALTHCHECK NONE\nSHELL [\"/bin/sh\", \"-ec\"]\nVOLUME [\"/data\"]\nVOLUME /a /b\n\
             EXPOSE 80/tcp 53/udp\nSTOPSIGNAL SIGKILL\nUSER app:app\nWORKDIR /a/$B\n",
        );
        assert_eq!(
            s[0],
            Instruction::Copy(CopyArgs {
                chown: Some("55:mygroup".into()),
                chmod: Some("644".into()),
                sources: vec!["files*".into()],
                dest: "/somedir/".into(),
                from: None,
            })
        );
        assert_eq!(
            s[1],
            Instruction::Add(CopyArgs {
                sources: vec!["a b.tar".into()],
                dest: "/x y/".into(),
                ..Default::default()
            })
        );
        assert_eq!(
            s[2],
            Instruction::Healthcheck(Some(Healthcheck {
                interval: Some("5m".into()),
                timeout: Some("3s".into()),
                command: Some(Command::Shell("curl -f http://localhost/ || exit 1".into())),
                ..Default::default()
            }))
        );
        assert_eq!(s[3], Instruction::Healthcheck(None));
        assert_eq!(
            s[4],
            Instruction::Shell(vec!["/bin/sh".into(), "-ec".into()])
        );
        assert_eq!(s[5], Instruction::Volume(vec!["/data".into()]));
        assert_eq!(s[6], Instruction::Volume(vec!["/a".into(), "/b".into()]));
        assert_eq!(s[7], Instruction::Expose("80/tcp 53/udp".into()));
        assert_eq!(s[8], Instruction::StopSignal("SIGKILL".into()));
        assert_eq!(s[9], Instruction::User("app:app".into()));
        assert_eq!(s[10], Instruction::Workdir("/a/$B".into()));
    }

    #[test]
    fn errors_name_file_line_and_what_was_expected() {
        assert_eq!(
            err("FROM a\n\nFROB x\n"),
            "Dockerfile:3: unknown instruction FROB: expected FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, CMD, ENTRYPOINT, EXPOSE, LABEL, VOLUME, STOPSIGNAL, HEALTHCHECK, SHELL"
        );
        assert_eq!(
            err("RUN x\nFROM a"),
            "Dockerfile:1: RUN before FROM: expected FROM (only ARG may come first)"
        );
        assert_eq!(
            err("# only a comment\n"),
            "Dockerfile:1: no FROM instruction: expected FROM IMAGE"
        );
        assert!(err("FROM a\nCOPY onlyone").starts_with("Dockerfile:2: COPY needs a source"));
        assert!(err("FROM a\nCOPY --chmod=abc a b").contains("expected an octal mode"));
        assert!(err("FROM a\nCOPY --bogus a b").contains("unknown flag --bogus"));
        assert!(err("FROM a b c d").contains("Dockerfile:1: FROM: expected IMAGE [AS NAME]"));
        assert!(err("FROM a\nENV \"x").contains("Dockerfile:2: unterminated \" quote"));
        assert!(err("FROM a AS x\nFROM b AS x").contains("Dockerfile:2: stage name \"x\""));
        assert!(err("FROM a\nSHELL sh -c").contains("SHELL: expected a JSON array"));
        assert!(err("FROM a\nHEALTHCHECK --interval=1s").contains("HEALTHCHECK: expected NONE"));
        assert!(err("FROM a\nWORKDIR").contains("Dockerfile:2: WORKDIR needs an argument"));
        // A continued instruction's error is at its first line.
        assert!(err("FROM a\nCOPY \\\n  x").starts_with("Dockerfile:2:"));
    }
}
