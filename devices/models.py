# Models arrive with their issue; the app is installed now so migrations and
# URLs have a stable home.
