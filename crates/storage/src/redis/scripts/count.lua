local count = live_users(nil)
return count
