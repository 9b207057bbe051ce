# usage: zsh -f complete.zsh FPATH_DIR 'WORDS TO COMPLETE'
# zsh's own completion system (compinit, _arguments, _describe) on the line,
# in an interactive zsh on a pseudo-terminal (zsh/zpty), with compadd wrapped
# to print each match it adds as "<match>WORD</match>". Prints what the
# terminal showed; the caller picks the matches out.
zmodload zsh/zpty || exit 2
zpty z zsh -f -i
zpty -w z "PS1=''; PS2=''; RPS1=''; unsetopt prompt_sp zle_bracketed_paste 2>/dev/null"
zpty -w z "fpath=(${(q)1} \$fpath); autoload -Uz compinit; compinit -u -D"
# Calls that only collect matches (-O, -A, -D) are passed through unprinted.
zpty -w z 'compadd() {
  if [[ ${(j: :)@} == *-[OAD]* ]]; then builtin compadd "$@"; return; fi
  local -a __got; builtin compadd -O __got "$@"
  local m; for m in $__got; do print -r -- "<""match>$m</""match>"; done
  builtin compadd "$@"
}'
zpty -w z '__done() { print -r -- "<""done>" }; comppostfuncs=(__done); zstyle ":completion:*" menu no'
zpty -w -n z "$2"$'\t'
local out line
while zpty -r z line; do
  out+=$line
  [[ $line == *'<done>'* ]] && break
done
zpty -d z
print -r -- $out
