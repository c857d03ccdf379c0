#!/usr/bin/env bash
# Spark 4 needs Java 17 or newer. Say exactly what to do when it is missing.
set -u
java_bin="java"
if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
  java_bin="$JAVA_HOME/bin/java"
fi
help() {
  cat >&2 <<'MSG'
  Install a Java 17+ runtime, then re-run:
    Debian/Ubuntu:  sudo apt-get install -y openjdk-17-jre-headless
    RHEL/Fedora:    sudo dnf install -y java-17-openjdk-headless
    macOS:          brew install openjdk@17   (then export JAVA_HOME="$(brew --prefix openjdk@17)")
  If Java 17+ is installed but not first on PATH, set JAVA_HOME to its directory.
MSG
}
if ! command -v "$java_bin" >/dev/null 2>&1; then
  echo "error: Java not found (Spark needs Java 17 or newer)." >&2
  help
  exit 1
fi
version_line=$("$java_bin" -version 2>&1 | head -n 1)
major=$(printf '%s\n' "$version_line" | sed -E 's/.*version "([0-9]+)(\.([0-9]+))?.*/\1 \3/' )
set -- $major
if [ "${1:-0}" = "1" ]; then major_num=${2:-0}; else major_num=${1:-0}; fi
case "$major_num" in
  ''|*[!0-9]*) major_num=0 ;;
esac
if [ "$major_num" -lt 17 ]; then
  echo "error: Spark needs Java 17 or newer; found: $version_line ($java_bin)." >&2
  help
  exit 1
fi
