// The main step of the Beam action (action.yml): install beam, start its
// daemon in the runner's temp directory, join with the auth key, publish
// the port, and output the URL. post.js undoes it when the job ends.
// No dependencies: inputs, outputs and state are the runner's files and
// environment variables, as @actions/core reads and writes them.
"use strict";

const { execFileSync } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");

function input(name) {
  return (process.env[`INPUT_${name.replace(/ /g, "_").toUpperCase()}`] || "").trim();
}

function append(file, name, value) {
  if (!file) {
    return;
  }
  const delim = `beam_${Math.random().toString(36).slice(2)}`;
  fs.appendFileSync(file, `${name}<<${delim}${os.EOL}${value}${os.EOL}${delim}${os.EOL}`);
}

function run(bin, args, opts = {}) {
  return execFileSync(bin, args, { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], ...opts });
}

function install(version) {
  const prefix = path.join(process.env.RUNNER_TEMP || os.tmpdir(), "beam-npm");
  fs.mkdirSync(prefix, { recursive: true });
  const npm = process.platform === "win32" ? "npm.cmd" : "npm";
  run(npm, ["install", "--prefix", prefix, "--no-fund", "--no-audit", "--loglevel=error", `beam@${version}`], {
    stdio: ["ignore", "inherit", "inherit"],
    shell: process.platform === "win32",
  });
  const pkg = `@beam/${process.platform}-${process.arch}`;
  const exe = process.platform === "win32" ? "beam.exe" : "beam";
  return path.join(prefix, "node_modules", pkg, "bin", exe);
}

function main() {
  const server = input("server");
  const authkey = input("authkey");
  if (!server || !authkey) {
    throw new Error("inputs server and authkey are required");
  }
  console.log(`::add-mask::${authkey}`);
  const bin = input("binary") || install(input("version") || "latest");
  const state = path.join(process.env.RUNNER_TEMP || os.tmpdir(), "beam-state");
  const instance = ["--state", state, "--socket", path.join(state, "beamd.sock")];
  const hostname =
    input("hostname") || `gha-${process.env.GITHUB_RUN_ID || process.pid}-${process.env.GITHUB_RUN_ATTEMPT || 1}`;
  // From here on the post step has something to undo.
  append(process.env.GITHUB_STATE, "beam", bin);
  append(process.env.GITHUB_STATE, "state", state);
  append(process.env.GITHUB_OUTPUT, "hostname", hostname);
  process.stdout.write(
    run(bin, [...instance, "up", "--coordinator", server, "--hostname", hostname, "--timeout", "2m"], {
      env: { ...process.env, BEAM_AUTHKEY: authkey },
    }),
  );
  const port = input("port");
  if (!port) {
    return;
  }
  const args = [...instance, "expose", port, "--bg", "--inspect=false"];
  if (input("name")) {
    args.push("--name", input("name"));
  }
  const url = run(bin, args).trim().split(/\r?\n/)[0];
  if (!/^[a-z]+:\/\//.test(url)) {
    throw new Error(`beam expose printed ${JSON.stringify(url)}, not a URL`);
  }
  console.log(`published ${port} at ${url}`);
  append(process.env.GITHUB_OUTPUT, "url", url);
}

try {
  main();
} catch (err) {
  console.log(`::error::beam: ${err.message}`);
  process.exit(1);
}
