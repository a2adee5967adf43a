"""Where benchmarks run: the measuring agent, device profiles, and the transports that start the agent."""
