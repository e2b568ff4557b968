// Entry of the schedule function's bundle: Lambda calls its export `handler`.
export { scheduleHandler as handler } from './handler.js';
