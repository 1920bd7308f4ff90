// The post step of the Beam action (action.yml), run when the job ends:
// deregister the runner's node (its routes go with it) and stop the
// daemon main.js started. It never fails the job.
"use strict";

const { execFileSync } = require("child_process");
const path = require("path");

const bin = process.env.STATE_beam;
const state = process.env.STATE_state;
if (bin && state) {
  const instance = ["--state", state, "--socket", path.join(state, "beamd.sock")];
  for (const args of [["logout"], ["daemon", "stop"]]) {
    try {
      execFileSync(bin, [...instance, ...args], { stdio: "inherit", timeout: 30000 });
    } catch (err) {
      console.log(`::warning::beam ${args.join(" ")}: ${err.message}`);
    }
  }
}
