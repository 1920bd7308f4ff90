package node_test

import "beam.dev/beam/coordinator"

func coordinatorReusable() coordinator.AuthKeyOptions {
	return coordinator.AuthKeyOptions{Reusable: true}
}
