#!/usr/bin/env bash
# Maintains third_party/gvisor as upstream gVisor plus patches/*.patch (see
# README.md, and UPSTREAM for the version and what is copied).
#
#   update.sh tree DIR          DIR becomes a git repository: one commit of
#                               upstream's files (branch "upstream"), then
#                               one commit per patch (branch "main")
#   update.sh export DIR        writes DIR's commits since "upstream" to
#                               patches/, DIR's files to the copy and
#                               DIR's upstream version to UPSTREAM
#   update.sh refresh           regenerates patches/ from the copy, which
#                               must equal upstream plus the patches;
#   update.sh refresh PATCH     ... or folds the copy's difference into
#                               PATCH (e.g. 0005-tcp-bbr.patch);
#   update.sh refresh --new MSGFILE
#                               ... or makes it a new last patch, its
#                               message (a subject line, a blank line, what
#                               and why) read from MSGFILE
#   update.sh rebase DIR VERSION
#                               moves DIR's patches onto gVisor VERSION
#                               (a module version, e.g. v0.0.0-2026...),
#                               stopping at a conflict for you to resolve
#
# It needs git and go; the upstream source comes from the Go module cache
# (go mod download).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

die() {
	echo "update.sh: $*" >&2
	exit 1
}

# conf KEY prints the values of UPSTREAM's KEY lines, one a line.
conf() {
	awk -v k="$1" '$1 == k { $1 = ""; sub(/^ +/, ""); print }' "$here/UPSTREAM"
}

module=$(conf module)
[ -n "$module" ] || die "UPSTREAM names no module"
mapfile -t copies < <(conf copy)
mapfile -t drops < <(conf drop)
mapfile -t owns < <(conf own)

# moddir VERSION prints the module cache directory of module@VERSION,
# downloading it if needed (outside any module, so go.mod is not touched).
moddir() {
	local dir
	dir=$(cd / && GOFLAGS=-mod=mod go mod download -json "$module@$1" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -n "$dir" ] && [ -d "$dir" ] || die "go mod download $module@$1 gave no directory"
	echo "$dir"
}

is_dropped() {
	local d
	for d in "${drops[@]}"; do
		[ "$1" = "$d" ] && return 0
	done
	return 1
}

is_own() {
	local o
	for o in "${owns[@]}"; do
		case $o in
		*/) case $1 in "$o"*) return 0 ;; esac ;;
		*) [ "$1" = "$o" ] && return 0 ;;
		esac
	done
	return 1
}

# copy_upstream SRC DEST copies upstream's files (module directory SRC)
# into DEST as UPSTREAM's copy lines say, less the dropped ones.
copy_upstream() {
	local src=$1 dest=$2 line from to f rel
	for line in "${copies[@]}"; do
		read -r from to <<<"$line"
		if [ -f "$src/$from" ]; then
			mkdir -p "$(dirname "$dest/$to")"
			cp "$src/$from" "$dest/$to"
			chmod 644 "$dest/$to"
			continue
		fi
		[ -d "$src/$from" ] || die "upstream has no $from"
		mkdir -p "$dest/$to"
		for f in "$src/$from"/*; do
			[ -f "$f" ] || continue
			rel=$to/$(basename "$f")
			is_dropped "$rel" && continue
			cp "$f" "$dest/$rel"
			chmod 644 "$dest/$rel"
		done
	done
}

# copy_files prints the files of the copy that are not Beam's own, one a
# line, relative to third_party/gvisor.
copy_files() {
	local f
	(cd "$here" && find . -type f | sed 's|^\./||' | LC_ALL=C sort) | while read -r f; do
		is_own "$f" || echo "$f"
	done
}

# git_in DIR ARGS runs git in DIR with a committer identity if none is set.
git_in() {
	local dir=$1
	shift
	git -C "$dir" -c user.name="$(git -C "$dir" config user.name || echo Beam)" \
		-c user.email="$(git -C "$dir" config user.email || echo beam@localhost)" "$@"
}

cmd_tree() {
	local dir=$1 version=${2:-$(conf version)}
	[ ! -e "$dir" ] || die "$dir exists"
	mkdir -p "$dir"
	git -C "$dir" init -q
	git -C "$dir" symbolic-ref HEAD refs/heads/main
	git -C "$dir" config beam.version "$version"
	copy_upstream "$(moddir "$version")" "$dir"
	git_in "$dir" add -A
	git_in "$dir" commit -q -m "$module@$version"
	git -C "$dir" branch upstream
	local patches=("$here"/patches/*.patch)
	if [ -e "${patches[0]}" ]; then
		git_in "$dir" am -q "${patches[@]}" ||
			die "a patch does not apply to $module@$version; resolve it in $dir (git am --continue), then update.sh export $dir"
	fi
}

cmd_export() {
	local dir=$1 version f
	[ -z "$(git -C "$dir" status --porcelain)" ] || die "$dir has uncommitted changes"
	if [ -e "$dir/.git/rebase-apply" ] || [ -e "$dir/.git/rebase-merge" ]; then
		die "$dir is in the middle of a git am or rebase"
	fi
	version=$(git -C "$dir" config beam.version) || die "$dir was not made by update.sh tree"
	rm -f "$here"/patches/*.patch
	mkdir -p "$here/patches"
	git -C "$dir" format-patch -q --zero-commit --no-signature --full-index -N \
		-o "$here/patches" upstream..main
	copy_files | while read -r f; do rm "$here/$f"; done
	git -C "$dir" archive main | tar -x -C "$here"
	find "$here" -mindepth 1 -type d -empty -delete
	sed -i "s/^version .*/version $version/" "$here/UPSTREAM"
	echo "update.sh: patches/ and the copy now follow $dir ($module@$version)"
}

cmd_refresh() {
	local tmp f n c
	tmp=$(mktemp -d)
	cmd_tree "$tmp/t"
	git -C "$tmp/t" ls-files -z | (cd "$tmp/t" && xargs -0 rm -f)
	copy_files | while read -r f; do
		mkdir -p "$(dirname "$tmp/t/$f")"
		cp "$here/$f" "$tmp/t/$f"
	done
	git_in "$tmp/t" add -A
	if git -C "$tmp/t" diff --cached --quiet; then
		cmd_export "$tmp/t" >/dev/null
		rm -rf "$tmp"
		echo "update.sh: the copy is upstream plus the patches; patches/ regenerated"
		return
	fi
	echo "update.sh: the copy differs from upstream plus the patches in:"
	git -C "$tmp/t" diff --cached --stat | sed 's/^/  /'
	case ${1:-} in
	"")
		rm -rf "$tmp"
		die "name the patch to fold this into (update.sh refresh NNNN-name.patch) or make it a new one (update.sh refresh --new MSGFILE)"
		;;
	--new)
		[ -f "${2:-}" ] || die "--new needs a file with the patch's message"
		git_in "$tmp/t" commit -q -F "$2"
		;;
	*)
		n=$(cd "$here/patches" && ls -- *.patch | grep -n -x -F -- "$(basename "$1")" | cut -d: -f1) ||
			die "no patch $1 in patches/"
		c=$(git -C "$tmp/t" rev-list --reverse upstream..main | sed -n "${n}p")
		git_in "$tmp/t" commit -q --fixup="$c"
		GIT_SEQUENCE_EDITOR=: git_in "$tmp/t" rebase -q -i --autosquash upstream ||
			die "a later patch conflicts: resolve it in $tmp/t (git rebase --continue), then update.sh export $tmp/t"
		;;
	esac
	cmd_export "$tmp/t"
	rm -rf "$tmp"
}

cmd_rebase() {
	local dir=$1 version=$2 old
	[ -z "$(git -C "$dir" status --porcelain)" ] || die "$dir has uncommitted changes"
	old=$(git -C "$dir" rev-parse upstream)
	git -C "$dir" checkout -q --detach upstream
	git -C "$dir" ls-files -z | (cd "$dir" && xargs -0 rm -f)
	copy_upstream "$(moddir "$version")" "$dir"
	git_in "$dir" add -A
	git_in "$dir" commit -q --allow-empty -m "$module@$version"
	git -C "$dir" branch -f upstream HEAD
	git -C "$dir" config beam.version "$version"
	git -C "$dir" checkout -q main
	if ! git_in "$dir" rebase -q --onto upstream "$old" main; then
		echo "update.sh: a patch conflicts with $module@$version: resolve it in $dir" >&2
		echo "(edit, git add, git rebase --continue), then go on as below" >&2
	fi
	cat <<EOF
Next:
  update.sh export $dir
  go get $module@$version && go mod tidy    (from the repository root)
  go build ./... && go test ./third_party/gvisor/ ./netstack/...
If upstream added generated files (*_state_autogen.go), add drop lines to
UPSTREAM and start again from update.sh tree.
EOF
}

case ${1:-} in
tree) [ $# -ge 2 ] || die "usage: update.sh tree DIR [VERSION]"; cmd_tree "$2" "${3:-}" ;;
export) [ $# -eq 2 ] || die "usage: update.sh export DIR"; cmd_export "$2" ;;
refresh) shift; cmd_refresh "$@" ;;
rebase) [ $# -eq 3 ] || die "usage: update.sh rebase DIR VERSION"; cmd_rebase "$2" "$3" ;;
*) sed -n '2,/^set -/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
