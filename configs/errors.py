"""The one exception type for mistakes a user can fix: entry points print its message alone."""


class UserError(Exception):
  """A problem with the user's input, whose message names the problem and the fix."""
