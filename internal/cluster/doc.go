// Package cluster lets several fanout nodes share one PostgreSQL database:
// membership, partition leases with fencing, balance, failover and
// wake-ups. PostgreSQL is the only coordinator.
package cluster
