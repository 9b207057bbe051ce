"""Man pages and shell completion, written from the definitions the program itself uses.

    python3 -m autonumad.service.manpages --out DIR [--sample config/autonumad.toml]

writes DIR/autonumad.8, DIR/autonumad.toml.5, DIR/autonumad (bash
completion) and DIR/_autonumad (zsh completion). Nothing here is written by
hand twice:

- autonumad(8) and both completions walk `cli.build_parser()`, the parser
  behind `--help`: every subcommand, option, metavar, choice and help text;
- autonumad.toml(5) walks `config.SECTIONS`: every key with its default
  (rendered by the key's own check, as `check-config --json` prints it) and
  its accepted values (the check's `expect`, the text of its error
  messages), and takes each key's prose from the comment above it in the
  shipped config/autonumad.toml. A key without such a comment is an error,
  so the sample, the page and the code cannot disagree.

scripts/build-deb (debian/rules) and scripts/install run this; the tests
check the output against the parser and the key table.

Why not argparse-manpage or shtab: the config page needs the key table
anyway, argparse-manpage in Debian 12 is 1.2 (subcommand pages changed
since), and either would be one more build dependency on both install
routes for about a hundred lines here.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Iterable

from autonumad import __version__

# One date for every build of a version, so that a rebuild gives the same
# bytes; the version is what identifies the page.
_MONTH = "2026"


# -- roff ---------------------------------------------------------------------------


def roff(text: str) -> str:
    """Plain text as roff: backslashes escaped, minus signs kept as minus
    signs (man-pages(7): options must be "\\-"), and no line starting with
    a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in text.split("\n"))


def _bold(text: str) -> str:
    return f"\\fB{roff(text)}\\fR"


def _italic(text: str) -> str:
    return f"\\fI{roff(text)}\\fR"


def _paragraphs(text: str) -> list[str]:
    """Argparse descriptions are prose with hard line breaks; roff fills its own."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


# -- the parser -----------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """name -> subparser, in definition order."""
    for action in parser._actions:  # argparse has no public accessor for these
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _subcommand_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _synopsis(name: str, p: argparse.ArgumentParser) -> str:
    parts = [_bold("autonumad"), _bold(name)]
    for a in p._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        if a.option_strings:
            opt = _bold(a.option_strings[-1])
            if _takes_value(a):
                opt += " " + _italic(_metavar(a))
            parts.append(opt if a.required else f"[{opt}]")
        else:
            mv = _italic(_metavar(a))
            parts.append(f"[{mv}]" if a.nargs == "?" else mv)
    return " ".join(parts)


def _option_help(a: argparse.Action) -> str:
    text = a.help or ""
    if a.choices is not None and not a.option_strings:
        text = (text + " " if text else "") + "One of: " + ", ".join(map(str, a.choices)) + "."
    elif a.choices is not None:
        text = (text + " " if text else "") + "(" + "|".join(map(str, a.choices)) + ")"
    if (a.default not in (None, False, argparse.SUPPRESS) and _takes_value(a)
            and "default" not in text and a.option_strings):
        text += f" (default {a.default})"
    return text


def page_autonumad8(parser: argparse.ArgumentParser) -> str:
    subs = subcommands(parser)
    helps = _subcommand_help(parser)
    out = [
        f'.TH AUTONUMAD 8 "{_MONTH}" "autonumad {__version__}" "System Administration"',
        # No hyphenation, ragged right: option and key names must stay whole.
        ".nh", ".ad l",
        ".SH NAME",
        "autonumad \\- userspace NUMA balancer: memory follows tasks, tasks follow memory, tiered memory",
        ".SH SYNOPSIS",
        f"{_bold('autonumad')} [{_bold('--version')}] [{_bold('-h')}] {_italic('COMMAND')} [{_italic('OPTIONS')}]",
    ]
    for name, p in subs.items():
        out += [".br", _synopsis(name, p)]
    out.append(".SH DESCRIPTION")
    for para in _paragraphs(parser.description or ""):
        out += [".PP", roff(para)]
    out += [".PP", roff("As a service it runs as `autonumad run --kernel-knobs=external` under the systemd unit "
                        "autonumad.service, which applies and restores the kernel knobs in privileged "
                        "ExecStartPre=/ExecStopPost= lines. Its configuration file is described in "
                        "autonumad.toml(5).")]
    out += [".SH OPTIONS"]
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            continue
        out += _option_entry(a)
    out.append(".SH COMMANDS")
    for name, p in subs.items():
        out += [f".SS {_bold(name)}", roff(" ".join((helps.get(name) or "").split()) + ".") if helps.get(name) else ""]
        for para in _paragraphs(p.description or ""):
            out += [".PP", roff(para)]
        for a in p._actions:
            out += _option_entry(a)
    out += [
        ".SH EXIT STATUS",
        ".TP", _bold("0"), "Success.",
        ".TP", _bold("1"), roff("A runtime error, a rejected reload (reload --wait), or drift (sysctl verify)."),
        ".TP", _bold("2"), "A usage error.",
        ".TP", _bold("78"), roff("A configuration error (EX_CONFIG); the unit does not restart on it."),
        ".SH FILES",
        ".TP", _bold("/etc/autonumad/autonumad.toml"), roff("The configuration; see autonumad.toml(5)."),
        ".TP", _bold("/etc/autonumad/conf.d/*.toml"), roff("Drop-ins, read after it in name order."),
        ".TP", _bold("/run/autonumad/"), roff("state.json (the last pass, read by status and reload) and the "
                                              "saved originals of the kernel knobs."),
        ".TP", _bold("/usr/share/autonumad/"), roff("Prometheus alerting rules and a Grafana dashboard."),
        ".TP", _bold("/usr/share/doc/autonumad/operations.md"), roff("The operations guide."),
        ".SH SEE ALSO",
        "autonumad.toml(5), systemctl(1), journalctl(1), numactl(8), move_pages(2), sched_setaffinity(2)",
    ]
    return "\n".join(line for line in out if line != "") + "\n"


def _option_entry(a: argparse.Action) -> list[str]:
    if a.option_strings:
        head = ", ".join(_bold(o) for o in a.option_strings)
        if _takes_value(a):
            head += " " + _italic(_metavar(a))
    else:
        head = _italic(_metavar(a))
    return [".TP", head, roff(_option_help(a))]


# -- the config keys -------------------------------------------------------------------


_KEY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=")
_SECTION_LINE = re.compile(r"^\[([A-Za-z_]+)\]\s*$")


def sample_comments(text: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """The shipped sample's prose: (file header, section -> intro, "section.key" -> description).

    A key's description is the comment paragraph right above it. Keys listed
    together under one comment (include_comm, exclude_comm) share it when it
    names them (a word of the key begins a word of the comment). A
    section's intro is any comment paragraph before its first key's own.
    """
    header: list[str] = []
    intros: dict[str, str] = {}
    keys: dict[str, str] = {}
    section = None
    block: list[str] = []
    last_desc = ""
    prev_was_key = False
    for raw in text.splitlines():
        line = raw.strip()
        m = _SECTION_LINE.match(line)
        if m:
            if section is None:
                header = block
            section, block, prev_was_key = m.group(1), [], False
            continue
        if line.startswith("#"):
            block.append(line[1:].removeprefix(" "))
            prev_was_key = False
            continue
        km = _KEY_LINE.match(line)
        if km and section is not None:
            paras = _split_blank(block)
            if paras:
                if section not in intros and len(paras) > 1:
                    intros[section] = "\n\n".join(" ".join(p) for p in paras[:-1])
                last_desc = " ".join(paras[-1])
            elif not prev_was_key or not _names(km.group(1), last_desc):
                # A key listed right under another shares its comment only
                # if that comment names it, so a deleted comment is noticed
                # instead of inheriting the neighbour's prose.
                last_desc = ""
            keys[f"{section}.{km.group(1)}"] = last_desc
            block, prev_was_key = [], True
            continue
        if not line:
            if section is None:
                block.append("")
            else:
                block, prev_was_key = [], False
    return "\n".join(header).strip(), intros, keys


def _names(key: str, comment: str) -> bool:
    """Does a comment speak of this key: one of its words (4+ letters) begins a word there?"""
    words = re.findall(r"[a-z0-9]+", comment.lower())
    return any(any(w.startswith(part) for w in words) for part in key.lower().split("_") if len(part) >= 4)


def _split_blank(lines: list[str]) -> list[list[str]]:
    paras: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            paras[-1].append(line.strip())
        elif paras[-1]:
            paras.append([])
    return [p for p in paras if p]


class ManpageError(Exception):
    """The sources disagree (a key without prose in the sample); one line."""


def _toml_value(value: object) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + "}"
    return str(value)


def config_keys() -> list[tuple[str, str, str, str]]:
    """(section, key, default as TOML, accepted values) for every key, in definition order."""
    from autonumad.service.config import SECTIONS

    out = []
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            check = f.metadata["check"]
            out.append((section, f.name, _toml_value(check.render(f.default)), check.expect))
    return out


def page_autonumad_toml5(sample_text: str) -> str:
    from autonumad.service.config import SECTIONS

    header, intros, prose = sample_comments(sample_text)
    missing = [f"{s}.{k}" for s, k, _, _ in config_keys() if not prose.get(f"{s}.{k}")]
    if missing:
        raise ManpageError("no comment above these keys in the sample config: " + ", ".join(missing))
    out = [
        f'.TH AUTONUMAD.TOML 5 "{_MONTH}" "autonumad {__version__}" "File Formats"',
        ".nh", ".ad l",
        ".SH NAME",
        "autonumad.toml \\- configuration of the autonumad NUMA balancer",
        ".SH SYNOPSIS",
        "/etc/autonumad/autonumad.toml, /etc/autonumad/conf.d/*.toml",
        ".SH DESCRIPTION",
    ]
    for para in _paragraphs(header.replace("autonumad configuration: /etc/autonumad/autonumad.toml", "")):
        out += [".PP", roff(para)]
    out += [".PP", roff("Every *.toml file in conf.d/ beside the file is read after it, in name order; a key a "
                        "drop-in sets replaces the value before it (lists are replaced, not appended). "
                        "autonumad check-config reads the drop-ins too.")]
    keys = config_keys()
    for section in SECTIONS:
        out.append(f'.SH "[{section}]"')
        if section in intros:
            for para in _paragraphs(intros[section]):
                out += [".PP", roff(para)]
        for s, key, default, expect in keys:
            if s != section:
                continue
            out += [".TP", f"{_bold(key)} = {_italic(default)}",
                    roff(prose[f"{s}.{key}"]),
                    ".br", f"{_italic('Accepted:')} {roff(expect)}.",
                    ".br", f"{_italic('Default:')} {roff(default)}."]
    out += [
        ".SH FILES",
        ".TP", _bold("/etc/autonumad/autonumad.toml"),
        roff("Installed with every key at its default. It must be owned by root and not writable by group or "
             "others."),
        ".SH SEE ALSO",
        "autonumad(8), systemd.service(5)",
    ]
    return "\n".join(out) + "\n"


# -- bash completion -------------------------------------------------------------------


# Metavars whose values are paths: complete files or directories there.
_FILE_METAVARS = {"PATH"}
_DIR_METAVARS = {"DIR"}


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion function for `autonumad`, from the parser.

    Completes subcommands, each subcommand's options, the values of options
    and positionals with choices, files for PATH and directories for DIR;
    other values (numbers, sizes, pids) get no completion.
    """
    subs = subcommands(parser)
    top_opts = [o for a in parser._actions for o in a.option_strings]
    lines = [
        "# bash completion for autonumad(8); generated by autonumad.service.manpages from",
        "# the same argparse definitions as `autonumad --help`. Do not edit.",
        "_autonumad()",
        "{",
        "    local cur prev cmd i",
        "    cur=${COMP_WORDS[COMP_CWORD]}",
        "    prev=${COMP_WORDS[COMP_CWORD-1]}",
        "    cmd=",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        "        case ${COMP_WORDS[i]} in",
        "            -*) ;;",
        "            *) cmd=${COMP_WORDS[i]}; break ;;",
        "        esac",
        "    done",
        '    if [[ -z $cmd ]]; then',
        f'        COMPREPLY=($(compgen -W "{" ".join(list(subs) + top_opts)}" -- "$cur"))',
        "        return",
        "    fi",
        "    case $cmd in",
    ]
    for name, p in subs.items():
        opts = [o for a in p._actions for o in a.option_strings]
        value_cases = []
        for a in p._actions:
            if not a.option_strings or not _takes_value(a):
                continue
            pattern = "|".join(a.option_strings)
            if a.choices is not None:
                value_cases.append(f'{pattern}) COMPREPLY=($(compgen -W "{" ".join(map(str, a.choices))}" -- "$cur")); return ;;')
            elif _metavar(a) in _FILE_METAVARS:
                value_cases.append(f'{pattern}) COMPREPLY=($(compgen -f -- "$cur")); return ;;')
            elif _metavar(a) in _DIR_METAVARS:
                value_cases.append(f'{pattern}) COMPREPLY=($(compgen -d -- "$cur")); return ;;')
            else:
                value_cases.append(f"{pattern}) COMPREPLY=(); return ;;")
        positional = [a for a in p._actions if not a.option_strings]
        words = list(opts)
        pos_files = False
        for a in positional:
            if a.choices is not None:
                words += [str(c) for c in a.choices]
            elif _metavar(a) in ("path",) or a.dest == "path":
                pos_files = True
        lines.append(f"        {name})")
        if value_cases:
            lines.append("            case $prev in")
            lines += [f"                {c}" for c in value_cases]
            lines.append("            esac")
        if pos_files:
            lines.append('            if [[ $cur != -* ]]; then COMPREPLY=($(compgen -f -- "$cur")); return; fi')
        lines.append(f'            COMPREPLY=($(compgen -W "{" ".join(words)}" -- "$cur"))')
        lines.append("            ;;")
    lines += [
        "    esac",
        "}",
        "complete -o filenames -F _autonumad autonumad",
    ]
    return "\n".join(lines) + "\n"


# -- zsh completion --------------------------------------------------------------------


def _zsh_quote(text: str) -> str:
    """`text` as one single-quoted zsh word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_escape(text: str) -> str:
    """A description or message inside an _arguments spec: backslash, `[`, `]` and `:` are its syntax
    (zshcompsys(1), "_arguments")."""
    text = " ".join(text.split())
    for ch in "\\[]:":
        text = text.replace(ch, "\\" + ch)
    return text


def _zsh_value_action(a: argparse.Action) -> str:
    """What completes the value of `a`: its choices, files, directories, pids, or nothing."""
    if a.choices is not None:
        return "(" + " ".join(str(c) for c in a.choices) + ")"
    mv = _metavar(a)
    if mv in _FILE_METAVARS or (not a.option_strings and a.dest == "path"):
        return "_files"
    if mv in _DIR_METAVARS:
        return "_files -/"
    if not a.option_strings and a.dest == "pid":
        return "_pids"
    return " "  # a number, a size: nothing to offer (a space: "no completion", not "default")


def _zsh_specs(p: argparse.ArgumentParser) -> list[str]:
    """_arguments specs for every option and positional of `p`."""
    specs = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            continue
        help_text = _zsh_escape(_option_help(a))
        message = _zsh_escape(_metavar(a))
        if a.option_strings:
            excl = "(" + " ".join(a.option_strings) + ")" if len(a.option_strings) > 1 else ""
            value = f":{message}:{_zsh_value_action(a)}" if _takes_value(a) else ""
            for o in a.option_strings:
                specs.append(f"{excl}{o}[{help_text}]{value}")
        else:
            lead = "::" if a.nargs == "?" else ":"
            specs.append(f"{lead}{message}:{_zsh_value_action(a)}")
    return specs


def zsh_completion(parser: argparse.ArgumentParser) -> str:
    """A zsh completion function (`_autonumad`, for fpath) from the parser, as bash_completion.

    The top level completes its options and the subcommands with their help;
    each subcommand its own options (with their help), the values of options
    and positionals with choices, files for PATH, directories for DIR and
    process ids for explain's PID.
    """
    subs, sub_help = subcommands(parser), _subcommand_help(parser)
    lines = [
        "#compdef autonumad",
        "# zsh completion for autonumad(8); generated by autonumad.service.manpages from",
        "# the same argparse definitions as `autonumad --help`. Do not edit.",
        "",
        "_autonumad() {",
        '    local curcontext="$curcontext" state line ret=1',
        "    typeset -A opt_args",
        "    local -a commands",
        "    commands=(",
    ]
    lines += [f"        {_zsh_quote(name.replace(':', chr(92) + ':') + ':' + ' '.join(sub_help.get(name, '').split()))}"
              for name in subs]
    lines += ["    )", "    _arguments -C \\"]
    lines += [f"        {_zsh_quote(s)} \\" for s in _zsh_specs(parser)]
    lines += [
        "        '1:command:->command' \\",
        "        '*::argument:->argument' && ret=0",
        "    case $state in",
        "        command)",
        "            _describe -t commands 'autonumad command' commands && ret=0",
        "            ;;",
        "        argument)",
        '            curcontext="${curcontext%:*:*}:autonumad-$line[1]:"',
        "            case $line[1] in",
    ]
    for name, p in subs.items():
        lines.append(f"                {name})")
        lines.append("                    _arguments \\")
        lines += [f"                        {_zsh_quote(s)} \\" for s in _zsh_specs(p)]
        lines[-1] = lines[-1].removesuffix(" \\") + " && ret=0"
        lines.append("                    ;;")
    lines += [
        "            esac",
        "            ;;",
        "    esac",
        "    return ret",
        "}",
        "",
        '_autonumad "$@"',
    ]
    return "\n".join(lines) + "\n"


# -- entry point ------------------------------------------------------------------------


def write_all(out: Path, sample: Path) -> list[Path]:
    from autonumad.cli import build_parser

    parser = build_parser()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("autonumad.8", page_autonumad8(parser)),
                       ("autonumad.toml.5", page_autonumad_toml5(sample.read_text(encoding="utf-8"))),
                       ("autonumad", bash_completion(parser)),
                       ("_autonumad", zsh_completion(parser))):
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m autonumad.service.manpages",
                                 description="Write autonumad.8, autonumad.toml.5 and the bash and zsh completions.")
    ap.add_argument("--out", metavar="DIR", required=True, help="directory to write them to")
    ap.add_argument("--sample", metavar="PATH", default=str(Path(__file__).resolve().parents[2] / "config" / "autonumad.toml"),
                    help="the shipped config whose comments describe each key (default: the checkout's)")
    args = ap.parse_args(None if argv is None else list(argv))
    sample = Path(args.sample)
    if not sample.is_file():
        print(f"manpages: {sample}: no such file (pass --sample config/autonumad.toml)", file=sys.stderr)
        return 2
    try:
        for p in write_all(Path(args.out), sample):
            print(p)
    except ManpageError as e:
        print(f"manpages: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
