"""audiorl.rl"""
