#!/bin/sh
# tools/need.sh PROGRAM PACKAGE WHY [PATH...]: make sure a system program is here.
# Found on PATH or at one of the PATHs: nothing to do. Else installed with apt-get
# (as root, or with password-less sudo); else one error line saying how, exit 1.
prog=$1 pkg=$2 why=$3
shift 3
command -v "$prog" >/dev/null && exit 0
for p in "$@"; do [ -x "$p" ] && exit 0; done
if command -v apt-get >/dev/null; then
	if [ "$(id -u)" = 0 ]; then sudo=
	elif sudo -n true 2>/dev/null; then sudo="sudo -n"
	else sudo=no; fi
	if [ "$sudo" != no ]; then
		echo "$prog missing: installing $pkg with apt-get ($why)"
		$sudo apt-get update -qq
		$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" || exit 1
		command -v "$prog" >/dev/null && exit 0
		for p in "$@"; do [ -x "$p" ] && exit 0; done
		exit 1
	fi
fi
echo "error: $prog is not installed ($why)." >&2
echo "       Debian/Ubuntu: sudo apt-get install $pkg; macOS: brew install $pkg" >&2
exit 1
