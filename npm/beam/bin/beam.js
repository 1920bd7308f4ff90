#!/usr/bin/env node
// The beam launcher: runs the beam binary of this platform's package
// (@beam/linux-x64, @beam/darwin-arm64, ...), which npm installed as an
// optional dependency because its os and cpu match this machine.
"use strict";

const { spawn } = require("child_process");
const path = require("path");

const pkg = `@beam/${process.platform}-${process.arch}`;
const exe = process.platform === "win32" ? "beam.exe" : "beam";

function binary() {
  if (process.env.BEAM_BINARY) {
    return process.env.BEAM_BINARY;
  }
  try {
    return require.resolve(`${pkg}/bin/${exe}`);
  } catch (e) {
    const known = require(path.join(__dirname, "..", "package.json")).optionalDependencies || {};
    const which = Object.keys(known).join(", ");
    process.stderr.write(
      `beam: no binary for ${process.platform}-${process.arch}: ${pkg} is not installed.\n` +
        (pkg in known
          ? "Reinstall without --no-optional (or --omit=optional) so npm installs it.\n"
          : `Beam ships binaries for ${which}; on another platform build it with \`go install beam.dev/beam/cmd/beam@latest\`.\n`),
    );
    process.exit(1);
  }
}

const child = spawn(binary(), process.argv.slice(2), { stdio: "inherit" });
// Ctrl-C reaches beam from the terminal (one process group): the launcher
// only waits for beam to finish withdrawing what it published. A SIGTERM or
// SIGHUP sent to the launcher alone is passed on.
process.on("SIGINT", () => {});
for (const sig of ["SIGTERM", "SIGHUP"]) {
  process.on(sig, () => child.kill(sig));
}
child.on("error", (err) => {
  process.stderr.write(`beam: ${err.message}\n`);
  process.exit(1);
});
child.on("exit", (code, signal) => {
  if (signal) {
    // Die of the same signal, so a shell sees what beam saw.
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
    return;
  }
  process.exit(code === null ? 1 : code);
});
