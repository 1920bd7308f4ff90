// Package release builds what Beam ships besides `go install`: Debian and
// RPM packages (with nfpm, used as a library) holding the binary, the
// systemd units of every role, sysusers.d and tmpfiles.d entries and the
// example settings; and the npm packages of `npx beam` (a launcher and
// one package per platform, as esbuild and turbo ship theirs).
package release
