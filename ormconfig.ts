import { loadConfig } from './server/config.js';
import { createDataSource } from './server/db.js';

/** The data source of the TypeORM CLI (`npm run migrate`, `npm run migrate:revert`). */
const config = loadConfig();
export default await createDataSource(config);
